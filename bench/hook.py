"""Benchmark: the libvirt hook's whole run (process start to exit) at `prepare begin`, against a local agent.

Runs `libvirt-hooks/qemu NAME prepare begin -` the way libvirtd does (XML on stdin, bare environment), 3 warm-ups
then --runs timed runs, and prints the bare interpreter start as the floor. The agent is a real `kvmplat-agent`
started on a private socket (kvmplat.client.localagent). Last line: {"hook_p50_ms": .., "hook_p99_ms": .., ...}.
Target p50 ≤ 150 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "libvirt-hooks" / "qemu"
XML = (ROOT / "tests" / "golden" / "domains" / "x86-kvm-hidden-host-model.xml").read_bytes()
ENV = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


def wait_ready(address: str, timeout: float = 30) -> None:
    """Blocks until the agent answers CheckPlatform for the benchmark domain."""
    env = {**ENV, "KVMPLAT_AGENT": address, "KVMPLAT_HOOK_CONFIG": "/dev/null"}
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run([str(HOOK), "web1", "prepare", "begin", "-"], input=XML, env=env, capture_output=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the hook never passed against {address}: {done.stderr.decode().strip()}")
        time.sleep(0.2)


def timed(argv: list[str], env: dict[str, str], stdin: bytes, cpu: list[float] | None = None) -> float:
    """Wall time of one process run, start to exit, in ms (its CPU time appended to `cpu`); it must succeed."""
    c0, t0 = os.times(), time.perf_counter()
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True)
    ms, c1 = (time.perf_counter() - t0) * 1000, os.times()
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode().strip()}")
    if cpu is not None:
        cpu.append((c1.children_user - c0.children_user + c1.children_system - c0.children_system) * 1000)
    return ms


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    """Measures and prints the figures; the JSON summary is the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    from kvmplat.client.localagent import LocalAgent

    tmp = Path(tempfile.mkdtemp(prefix="kvmplat-bench-hook-"))
    kind = "kvmplat-agent"
    local = LocalAgent.start(tmp, timeout=30)
    address = local.address
    try:
        wait_ready(address)
        env = {**ENV, "KVMPLAT_AGENT": address, "KVMPLAT_HOOK_CONFIG": "/dev/null"}
        argv = [str(HOOK), "web1", "prepare", "begin", "-"]
        floor = [timed([sys.executable, "-c", "pass"], env, b"") for _ in range(10)]
        for _ in range(3):
            timed(argv, env, XML)
        cpu: list[float] = []
        runs = [timed(argv, env, XML, cpu) for _ in range(args.runs)]
    finally:
        local.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    p50, p99 = statistics.median(runs), percentile(runs, 99)
    print(f"agent: {kind} at {address}; {len(runs)} runs of {HOOK.name} prepare begin (pid {os.getpid()})")
    floor_p50 = statistics.median(floor)
    print(f"hook: p50 {p50:.1f} ms, p99 {p99:.1f} ms, min {min(runs):.1f} ms; python -c pass p50 {floor_p50:.1f} ms")
    print(f"hook CPU (user+sys, all its processes) p50 {statistics.median(cpu):.1f} ms: less sensitive to a busy host")
    print(f"ratio hook p50 / interpreter floor: {p50 / floor_p50:.1f}x; target p50 <= 150 ms")
    summary = {
        "hook_p50_ms": round(p50, 1),
        "hook_p99_ms": round(p99, 1),
        "hook_min_ms": round(min(runs), 1),
        "hook_cpu_p50_ms": round(statistics.median(cpu), 1),
        "python_floor_p50_ms": round(floor_p50, 1),
        "runs": len(runs),
        "agent": kind,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
