"""The x86 lab inside its guest (lab/x86/init.sh runs it on the guest's real /dev/kvm, kvm-amd): the project's own
code, in the issue's order, one JSON line per step on stdout (the console), which lab.py turns into the report.

    {"caps": ...}        `kvmplat caps --json` from an agent on a private socket: accel, level verdicts, pv offered
    {"demo": ...}        `kvmplat demo` (what `make demo` runs), its exit status
    {"guest_view": ...}  every platform of guest_view.CASES verified from inside a probe guest
    {"linux": ...}       the hardware-KVM tests (pytest, KVMPLAT_REQUIRE_KVM=1): Linux to /init on 1 and 2 vCPUs,
                         /proc/cpuinfo and "Hypervisor detected:" against the declared platform, poweroff; and the
                         INIT/SIPI run-loop tests
    {"boot": ...}        bench/boot.py --until init: kvmplat vs QEMU -M microvm -enable-kvm to KVMPLAT-INIT

KVMPLAT_LAB_SKIP (lab.py --skip) names steps to leave out while iterating ("demo,boot").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIN = Path(sys.executable).parent
TMP = Path("/tmp/x86lab")
STATE = TMP / "state"
ADDRESS = f"unix://{TMP}/agent.sock"
LINUX_TESTS = ("tests/linux/test_linux_hardware.py", "tests/kvm/test_sipi.py")
# Report fields of the Linux step, from the hardware tests' ids (test_linux_hardware.CASES).
LINUX_FIELDS = {
    "init_1vcpu": ("bzimage-1vcpu", "vmlinux-1vcpu"),
    "init_2vcpu": ("bzimage-2vcpu", "vmlinux-2vcpu"),
    "cpuinfo_matches": ("bzimage-1vcpu-bare-metal-v2", "vmlinux-2vcpu-kvm-v3", "vmlinux-1vcpu-hyperv-poweroff"),
    "hypervisor_line_matches": ("bzimage-1vcpu-bare-metal-v2", "vmlinux-2vcpu-kvm-v3", "vmlinux-1vcpu-hyperv-poweroff"),
}


def emit(key: str, value: Any) -> None:
    """One JSON line on the console."""
    print(json.dumps({key: value}), flush=True)


def note(text: str) -> None:
    """A progress line the host shows (not part of the report)."""
    print(f"KVMPLAT-LAB-NOTE {text}", flush=True)


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None, echo: str = "") -> tuple[int, str, float]:
    """(exit status, stdout+stderr, seconds) of a command; 124 on timeout. Output lines matching `echo` are shown
    as notes while it runs."""
    t0 = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        for line in proc.stdout:
            lines.append(line)
            if echo and re.search(echo, line):
                note(line.rstrip()[:300])
        timer.cancel()
        rc = proc.wait()
    return (124 if rc == -9 else rc), "".join(lines), time.monotonic() - t0


def start_agent() -> subprocess.Popen[bytes]:
    """kvmplat-agent on a private socket; returns once it answers."""
    from kvmplat.client.agent import Client

    TMP.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "kvmplat-agent"), "--listen", ADDRESS, "--state-dir", str(STATE)]
    log = (TMP / "agent.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    with Client(ADDRESS, timeout=30.0) as c:
        if not c.wait_ready(60.0):
            raise SystemExit(f"agent did not answer: {(TMP / 'agent.log').read_text()[-500:]}")
    return proc


def caps() -> dict[str, Any]:
    """`kvmplat caps --json` against the lab's agent."""
    rc, out, secs = run([str(BIN / "kvmplat"), "caps", "--json"], 120, dict(os.environ, KVMPLAT_AGENT=ADDRESS))
    if rc:
        return {"ok": False, "rc": rc, "tail": out[-1500:]}
    c = json.loads(out)
    levels = {lv["name"]: ("admitted" if lv.get("strict") else "refused") for lv in c.get("levels", [])}
    missing = {lv["name"]: lv.get("missing", []) for lv in c.get("levels", [])}
    return {
        "accel": c.get("accelDefault"),
        "levels": levels,
        "missing": missing,
        "pv": c.get("pv", []),
        "hv_bit_hideable": c.get("hvBitHideable"),
        "host_truth": c.get("hostTruthSource"),
        "seconds": round(secs, 1),
    }


def demo() -> dict[str, Any]:
    """`kvmplat demo`, as `make demo` runs it."""
    rc, out, secs = run([str(BIN / "kvmplat"), "demo"], 600)
    return {"ok": rc == 0, "rc": rc, "seconds": round(secs, 1), "tail": out.strip().splitlines()[-4:]}


def guest_views() -> dict[str, Any]:
    """guest_view.verify_all against the lab's agent."""
    from kvmplat.client.agent import Client
    from kvmplat.lab.x86.guest_view import verify_all

    t0 = time.monotonic()
    with Client(ADDRESS, timeout=60.0) as c:
        cases = verify_all(c, STATE)
    return {"cases": cases, "seconds": round(time.monotonic() - t0, 1)}


def linux() -> dict[str, Any]:
    """The hardware-KVM tests under pytest with KVMPLAT_REQUIRE_KVM=1; the report fields from their outcomes."""
    env = dict(os.environ, KVMPLAT_REQUIRE_KVM="1")
    cmd = [str(BIN / "python"), "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA", *LINUX_TESTS]
    rc, out, secs = run(cmd, 900, env, echo=r"PASSED|FAILED|ERROR|SKIPPED")
    outcomes = {m[1]: m[2] for m in re.finditer(r"::(\S+) (PASSED|FAILED|ERROR|SKIPPED)", out)}
    fields = {
        field: all(any(k in t and v == "PASSED" for t, v in outcomes.items()) for k in keys)
        for field, keys in LINUX_FIELDS.items()
    }
    failed = [t for t, v in outcomes.items() if v != "PASSED"]
    tail = out.strip().splitlines()[-25:] if rc else out.strip().splitlines()[-2:]
    return {
        "ok": rc == 0,
        "rc": rc,
        **fields,
        "tests": outcomes,
        "failed": failed,
        "seconds": round(secs, 1),
        "tail": tail,
    }


def boot() -> dict[str, Any]:
    """bench/boot.py to KVMPLAT-INIT, kvmplat vs QEMU microvm on this /dev/kvm."""
    cmd = [str(BIN / "python"), "bench/boot.py", "--until", "init", "--machines", "microvm", "--runs", "5", "--json"]
    rc, out, secs = run(cmd, 600, echo=r"^round ")
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if rc == 0 and lines else {}
    return {"ok": bool(result), "rc": rc, **result, "seconds": round(secs, 1), "tail": out.strip().splitlines()[-6:]}


def bootdiff() -> dict[str, Any]:
    """bench/bootdiff.py: kvmplat vs QEMU microvm phase by phase (kernel log stamps) and exit by exit (tracefs)."""
    cmd = [str(BIN / "python"), "bench/bootdiff.py", "--runs", os.environ.get("KVMPLAT_LAB_DIFF_RUNS", "1")]
    cmd += ["--extra", os.environ.get("KVMPLAT_LAB_DIFF_EXTRA", "")]
    rc, out, secs = run(cmd, 900, echo=r"^(dmesg|\{)")
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if rc == 0 and lines else {}
    return {"ok": bool(result), "rc": rc, **result, "seconds": round(secs, 1), "tail": out.strip().splitlines()[-6:]}


def main() -> int:
    """Runs every step (each failure is reported, never fatal to the others)."""
    skip = set(os.environ.get("KVMPLAT_LAB_SKIP", "").split(",")) - {""}
    note(f"python {sys.version.split()[0]}, /dev/kvm {'present' if os.path.exists('/dev/kvm') else 'ABSENT'}")
    t0 = time.monotonic()
    agent = start_agent()
    note(f"agent answering after {time.monotonic() - t0:.1f} s")
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("caps", caps),
        ("demo", demo),
        ("guest_view", guest_views),
    ]
    try:
        for key, step in steps:
            _step(key, step, skip)
    finally:
        agent.terminate()
        agent.wait(timeout=15)
    for key, step in (("linux", linux), ("boot", boot)):
        _step(key, step, skip)
    if "bootdiff" in os.environ.get("KVMPLAT_LAB_EXTRA", "").split(","):
        _step("bootdiff", bootdiff, skip)
    return 0


def _step(key: str, step: Callable[[], dict[str, Any]], skip: set[str]) -> None:
    if key in skip:
        emit(key, {"ok": False, "skipped": True})
        return
    note(f"step {key}")
    try:
        emit(key, step())
    except Exception as e:  # a broken step is reported, and the next one still runs
        emit(key, {"ok": False, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    sys.exit(main())
