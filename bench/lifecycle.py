"""Benchmark: VM lifecycle costs against a real `kvmplat-agent` started on a private socket and temporary state dir.

Measures create→RUNNING latency (CreateVm start=true until GetVm says RUNNING, p50/p99), create+start+stop+destroy
cycles per second from one client and from two concurrent clients, the cost of each RPC in a cycle, and the idle
overhead of a `loop` VM with 16 MiB of guest memory: the PSS of its runner (/proc/PID/smaps_rollup), how much of
that is guest memory the guest touched, and how often its threads wake (context switches per second, summed over
/proc/PID/task). Then how long a runner lives on after DestroyVm returns. Figures are printed, not asserted. Last line:
{"create_to_running_ms": {"p50": .., "p99": ..}, "cycles_per_s": .., "cycles_per_s_2clients": .., "idle_vm_pss_mib": ..,
 "idle_vm_wakeups_per_s": .., "destroy_to_exit_ms": {"p50": .., "p99": ..}}
Targets (issue 2): p50 ≤ 20 ms, ≥ 50 cycles/s, ≤ 8 MiB PSS beyond guest memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import agentproc
from kvmplat.v1 import agent_pb2 as pb


def spec(name: str) -> pb.VmSpec:
    """A 1-vCPU, 16 MiB `loop` VM."""
    return pb.VmSpec(name=name, vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"))


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def create_to_running(stub: Any, n: int) -> list[float]:
    """Milliseconds from CreateVm(start=true) until GetVm says RUNNING, for `n` VMs (each destroyed after)."""
    out = []
    for i in range(n):
        name = f"lat{i}"
        t0 = time.perf_counter()
        stub.CreateVm(pb.CreateVmRequest(spec=spec(name), start=True), timeout=30)
        while stub.GetVm(pb.VmRequest(name=name), timeout=10).state != pb.RUNNING:
            pass
        out.append((time.perf_counter() - t0) * 1e3)
        stub.StopVm(pb.VmRequest(name=name), timeout=10)
        stub.DestroyVm(pb.VmRequest(name=name), timeout=10)
    return out


def cycle(stub: Any, name: str, phases: dict[str, list[float]] | None = None) -> None:
    """Create (started), stop, destroy; per-RPC milliseconds into `phases`."""
    steps = [
        ("create+start", lambda: stub.CreateVm(pb.CreateVmRequest(spec=spec(name), start=True), timeout=30)),
        ("stop", lambda: stub.StopVm(pb.VmRequest(name=name), timeout=10)),
        ("destroy", lambda: stub.DestroyVm(pb.VmRequest(name=name), timeout=10)),
    ]
    for label, call in steps:
        t0 = time.perf_counter()
        call()
        if phases is not None:
            phases.setdefault(label, []).append((time.perf_counter() - t0) * 1e3)


def cycles_per_s(address: str, stub: Any, n: int, clients: int) -> float:
    """Cycles per second over `n` cycles split between `clients` threads, each with its own channel."""
    stubs = [stub] + [agentproc.stub(address) for _ in range(clients - 1)]

    def work(k: int) -> None:
        for i in range(n // clients):
            cycle(stubs[k], f"c{clients}-{k}-{i}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (n // clients) * clients / (time.perf_counter() - t0)


def smaps_pss(pid: int) -> tuple[float, float]:
    """(total PSS, PSS of the guest-memory mapping) of `pid`, in MiB; the guest mapping is the 16 MiB anonymous one."""
    total = 0.0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                total = int(line.split()[1]) / 1024
    guest, size, anon = 0.0, 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and ":" not in head[0]:
                anon = len(head) < 6  # a mapping line with no path
            elif head[0] == "Size:":
                size = int(head[1])
            elif head[0] == "Pss:" and anon and size == 16 * 1024:
                guest += int(head[1]) / 1024
    return total, guest


def switches(pid: int) -> int:
    """Context switches (voluntary and not) of every thread of `pid` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError), (task / "status").open() as f:
            total += sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
    return total


def idle_pss(stub: Any, n: int, settle: float) -> tuple[list[tuple[float, float]], list[float]]:
    """(PSS, guest PSS) of `n` idle running `loop` VMs, measured together after `settle` seconds, and each runner's
    context switches per second over that time."""
    pids = []
    for i in range(n):
        vm = stub.CreateVm(pb.CreateVmRequest(spec=spec(f"idle{i}"), start=True), timeout=30)
        pids.append(vm.runner_pid)
    before = [switches(pid) for pid in pids]
    time.sleep(settle)
    rates = [(switches(pid) - b) / settle for pid, b in zip(pids, before, strict=True)]
    out = [smaps_pss(pid) for pid in pids]
    for i in range(n):
        stub.StopVm(pb.VmRequest(name=f"idle{i}"), timeout=10)
        stub.DestroyVm(pb.VmRequest(name=f"idle{i}"), timeout=10)
    return out, rates


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie counts: its reaper, the runner template, may be slow)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def destroy_to_exit(stub: Any, n: int) -> list[float]:
    """Milliseconds from DestroyVm's return until the runner process has exited, over `n` VMs."""
    out = []
    for i in range(n):
        vm = stub.CreateVm(pb.CreateVmRequest(spec=spec(f"end{i}"), start=True), timeout=30)
        stub.StopVm(pb.VmRequest(name=f"end{i}"), timeout=10)
        stub.DestroyVm(pb.VmRequest(name=f"end{i}"), timeout=10)
        t0 = time.perf_counter()
        while not gone(vm.runner_pid):
            time.sleep(0.0005)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def report_phases(phases: dict[str, list[float]]) -> None:
    """Prints p50/p99 of each RPC of a cycle."""
    for label, ms in phases.items():
        print(f"  {label:<13} p50 {statistics.median(ms):6.2f} ms  p99 {pct(ms, 0.99):6.2f} ms")


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints human lines, then the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--vms", type=int, default=60, help="VMs for create→RUNNING latency (default 60)")
    p.add_argument("--cycles", type=int, default=100, help="create+start+stop+destroy cycles (default 100)")
    p.add_argument("--idle", type=int, default=8, help="idle VMs measured for PSS (default 8)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds idle VMs run before PSS is read")
    args = p.parse_args(argv)
    with agentproc.agent("bench") as (address, _, _):
        stub = agentproc.stub(address)
        cycle(stub, "warmup")
        lat = create_to_running(stub, args.vms)
        print(f"create→RUNNING over {len(lat)} VMs: p50 {statistics.median(lat):.2f} ms, p99 {pct(lat, 0.99):.2f} ms")
        phases: dict[str, list[float]] = {}
        for i in range(30):
            cycle(stub, f"ph{i}", phases)
        print("per-RPC cost of a cycle (30 cycles):")
        report_phases(phases)
        seq = cycles_per_s(address, stub, args.cycles, 1)
        two = cycles_per_s(address, stub, args.cycles, 2)
        print(f"create+start+stop+destroy cycles/s: {seq:.1f} (1 client), {two:.1f} (2 concurrent clients)")
        pss, rates = idle_pss(stub, args.idle, args.settle)
        total, guest = statistics.median(t for t, _ in pss), statistics.median(g for _, g in pss)
        wakeups = statistics.median(rates)
        print(f"idle loop VM (16 MiB guest) over {len(pss)} VMs: median PSS {total:.2f} MiB, of which guest memory")
        print(f"  touched {guest:.2f} MiB; beyond guest memory {total - guest:.2f} MiB; {wakeups:.1f} wakeups/s")
        ends = destroy_to_exit(stub, 20)
        print(f"DestroyVm return → runner exited over {len(ends)} VMs: p50 {statistics.median(ends):.1f} ms")
    result = {
        "create_to_running_ms": {"p50": round(statistics.median(lat), 3), "p99": round(pct(lat, 0.99), 3)},
        "cycles_per_s": round(seq, 1),
        "cycles_per_s_2clients": round(two, 1),
        "idle_vm_pss_mib": round(total, 3),
        "idle_vm_guest_pss_mib": round(guest, 3),
        "idle_vm_wakeups_per_s": round(wakeups, 1),
        "destroy_to_exit_ms": {"p50": round(statistics.median(ends), 1), "p99": round(pct(ends, 0.99), 1)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
