"""Benchmark: how many idle 1-vCPU VMs one agent holds on this machine, and what each costs.

Starts its own kvmplat-agent (private socket and state dir), then creates and starts idle VMs (`--payload`, default
`loop`: the boot vCPU sleeps in hlt between PIT ticks) one after another until `--count` (default 200) run, or the
agent refuses one, or the host's MemAvailable would fall below `--reserve-mib`. After `--settle` seconds it measures,
while they all run:

- the agent's RSS (and its growth since it had no VM) and the runner template's RSS;
- each runner's PSS (/proc/PID/smaps_rollup, so pages shared copy-on-write with the template count once in all),
  split into guest memory the guest touched (the anonymous mapping of the guest's size) and the rest (overhead);
  the overhead per VM also carries the agent's growth per VM;
- the CPU time the agent and runners spent per second while idle;
- GetCapabilities and ListVms latency (p50/p99 over `--calls` sequential calls each, one client).

Every VM it created is stopped and destroyed at the end, also after Ctrl-C or SIGTERM (runners outlive their agent,
so they are killed by pid when the agent cannot be asked). Figures are printed, not asserted. Last line:
{"vms_running", "agent_rss_mib", "runner_pss_mib_per_vm", "overhead_mib_per_vm", "p99_ms": {"GetCapabilities",
"ListVms"}, ...}. Goal (issue 6): 200 idle VMs, ≤ 8 MiB overhead each, p99 ≤ 20 ms.

Run it alone on the machine: `flock /tmp/kvmplat-heavy.lock .venv/bin/python bench/scale.py`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import agentproc
import grpc
from kvmplat.v1 import agent_pb2 as pb

KIB_PER_MIB = 1024


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: stop creating, clean up, report what was measured."""


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def meminfo_mib(key: str) -> float:
    """A /proc/meminfo field in MiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / KIB_PER_MIB
    return 0.0


def status_mib(pid: int, key: str = "VmRSS") -> float:
    """A /proc/PID/status size field in MiB (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / KIB_PER_MIB
    except OSError:
        pass
    return 0.0


@dataclass
class Smaps:
    """One runner's memory: PSS in all, PSS of guest memory, and the rest broken down by kind of mapping."""

    pss: float = 0.0
    guest: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)


def _kind(head: list[str]) -> str:
    """What a mapping line of /proc/PID/smaps is: a file, the heap, a stack, or anonymous memory."""
    if len(head) < 6:
        return "anon"
    path = head[5]
    if path.startswith("["):
        return path.strip("[]").split(":")[0]
    return "anon-kvm" if path.startswith("anon_inode:") else "file"


def smaps(pid: int, guest_kib: int) -> Smaps:
    """The runner's PSS (MiB), its guest-memory part (anonymous mappings of the guest's size) and the rest by kind."""
    out = Smaps()
    kind, size = "anon", 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split()
                if "-" in head[0] and not head[0].endswith(":"):
                    kind = _kind(head)
                elif head[0] == "Size:":
                    size = int(head[1])
                elif head[0] == "Pss:":
                    mib = int(head[1]) / KIB_PER_MIB
                    out.pss += mib
                    if kind == "anon" and size == guest_kib:
                        out.guest += mib
                    else:
                        key = "anon (thread stacks, heap arenas)" if kind == "anon" else kind
                        out.by_kind[key] = out.by_kind.get(key, 0.0) + mib
    except OSError:
        pass
    return out


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Fleet:
    """The VMs this run created (name → runner pid), so every one can be cleaned up."""

    stub: Any
    payload: str
    memory_mib: int
    vms: dict[str, int] = field(default_factory=dict)
    stopped_by: str = ""

    def grow(self, count: int, reserve_mib: float, progress: Callable[[int], None]) -> None:
        """Creates and starts VMs until `count` run, the agent refuses one, or memory runs short."""
        while len(self.vms) < count:
            if meminfo_mib("MemAvailable") < reserve_mib + self.memory_mib:
                self.stopped_by = f"MemAvailable below {reserve_mib:g} MiB"
                return
            name = f"scale{len(self.vms):04d}"
            spec = pb.VmSpec(name=name, vcpus=1, memory_mib=self.memory_mib, boot=pb.BootSpec(builtin=self.payload))
            try:
                vm = self.stub.CreateVm(pb.CreateVmRequest(spec=spec, start=True), timeout=60)
            except grpc.RpcError as e:
                self.stopped_by = f"CreateVm {name}: {e.code().name}: {e.details()}"
                with contextlib.suppress(grpc.RpcError):  # it may exist (created, not started)
                    self.stub.DestroyVm(pb.VmRequest(name=name), timeout=30)
                return
            self.vms[name] = vm.runner_pid
            progress(len(self.vms))
        self.stopped_by = f"reached --count {count}"

    def destroy_all(self) -> int:
        """Stops and destroys every VM of the agent (4 at a time), including one whose CreateVm was still in flight
        when Ctrl-C came; kills by pid the runners the agent could not destroy. Returns how many were killed."""
        done: dict[str, bool] = {}
        for _ in range(3):  # an interrupted CreateVm may show up only after the first round
            self._adopt_listed()
            todo = [n for n in self.vms if not done.get(n)]
            if not todo:
                break
            with cf.ThreadPoolExecutor(4) as pool:
                done.update(zip(todo, pool.map(self._destroy, todo), strict=True))
            time.sleep(0.5)
        leftover = [self.vms[n] for n, ok in done.items() if not ok and self.vms[n] > 0]
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(leftover)

    def _adopt_listed(self) -> None:
        """Adds every VM the agent lists (the agent is this run's own: all its VMs are ours)."""
        with contextlib.suppress(grpc.RpcError):
            for vm in self.stub.ListVms(pb.ListVmsRequest(), timeout=30).vms:
                if vm.runner_pid or vm.spec.name not in self.vms:
                    self.vms[vm.spec.name] = vm.runner_pid

    def _destroy(self, name: str) -> bool:
        """Stops and destroys one VM; True once the agent no longer knows it."""
        for call in (self.stub.StopVm, self.stub.DestroyVm):
            with contextlib.suppress(grpc.RpcError):
                call(pb.VmRequest(name=name), timeout=30)
        try:
            self.stub.GetVm(pb.VmRequest(name=name), timeout=10)
        except grpc.RpcError as e:
            return bool(e.code() == grpc.StatusCode.NOT_FOUND)
        return False


def latency(stub: Any, calls: int) -> dict[str, list[float]]:
    """Milliseconds per GetCapabilities and per ListVms, interleaved, `calls` of each."""
    out: dict[str, list[float]] = {"GetCapabilities": [], "ListVms": []}
    rpcs = (
        ("GetCapabilities", stub.GetCapabilities, pb.GetCapabilitiesRequest()),
        ("ListVms", stub.ListVms, pb.ListVmsRequest()),
    )
    for _ in range(calls):
        for name, rpc, req in rpcs:
            t0 = time.perf_counter()
            rpc(req, timeout=10)
            out[name].append((time.perf_counter() - t0) * 1e3)
    return out


def measure(fleet: Fleet, agent_pid: int, agent_rss0: float, args: argparse.Namespace) -> dict[str, Any]:
    """The figures while the fleet runs (see the module docstring)."""
    stub, n = fleet.stub, len(fleet.vms)
    running = sum(1 for vm in stub.ListVms(pb.ListVmsRequest(), timeout=30).vms if vm.state == pb.RUNNING)
    groups = {"agent": [agent_pid, *agentproc.children(agent_pid)], "runners": list(fleet.vms.values())}
    cpu0, t0 = {g: sum(map(agentproc.cpu_seconds, ps)) for g, ps in groups.items()}, time.monotonic()
    time.sleep(args.cpu_window)
    elapsed = time.monotonic() - t0
    cpu_share = {g: round((sum(map(agentproc.cpu_seconds, ps)) - cpu0[g]) / elapsed, 3) for g, ps in groups.items()}
    per = [smaps(pid, fleet.memory_mib * KIB_PER_MIB) for pid in fleet.vms.values()]
    pss, guest = sum(s.pss for s in per), sum(s.guest for s in per)
    kinds: dict[str, float] = {}
    for s in per:
        for k, v in s.by_kind.items():
            kinds[k] = kinds.get(k, 0.0) + v
    agent_rss = status_mib(agent_pid)
    template_rss = sum(status_mib(p) for p in agentproc.children(agent_pid))
    lat = latency(stub, args.calls)
    div = max(n, 1)
    return {
        "vms_running": running,
        "vms_created": n,
        "agent_rss_mib": round(agent_rss, 1),
        "agent_rss_growth_mib_per_vm": round((agent_rss - agent_rss0) / div, 3),
        "template_rss_mib": round(template_rss, 1),
        "runner_pss_mib_total": round(pss, 1),
        "runner_pss_mib_per_vm": round(pss / div, 3),
        "guest_pss_mib_per_vm": round(guest / div, 3),
        "overhead_mib_per_vm": round((pss - guest + max(0.0, agent_rss - agent_rss0)) / div, 3),
        "runner_pss_by_kind_mib_per_vm": {k: round(v / div, 3) for k, v in sorted(kinds.items())},
        "idle_cpu_share": cpu_share,
        "p50_ms": {k: round(statistics.median(v), 2) for k, v in lat.items()},
        "p99_ms": {k: round(pct(v, 0.99), 2) for k, v in lat.items()},
    }


def report(r: dict[str, Any], stopped_by: str, seconds: float) -> None:
    """The human-readable lines."""
    print(f"{r['vms_running']} of {r['vms_created']} VMs running ({stopped_by}); created in {seconds:.1f} s")
    print(
        f"agent RSS {r['agent_rss_mib']} MiB (+{r['agent_rss_growth_mib_per_vm']} MiB per VM), template RSS "
        f"{r['template_rss_mib']} MiB"
    )
    print(
        f"runner PSS {r['runner_pss_mib_per_vm']} MiB per VM, of which guest memory {r['guest_pss_mib_per_vm']} MiB;"
        f" overhead {r['overhead_mib_per_vm']} MiB per VM (goal ≤ 8)"
    )
    for k, v in r["runner_pss_by_kind_mib_per_vm"].items():
        print(f"  {k:<36} {v:8.3f} MiB per VM")
    cpu = r["idle_cpu_share"]
    print(
        f"CPU while idle: agent and template {cpu['agent'] * 100:.1f}%, runners {cpu['runners'] * 100:.1f}% of a core"
    )
    for k in r["p99_ms"]:
        print(f"{k:<16} p50 {r['p50_ms'][k]:6.2f} ms  p99 {r['p99_ms'][k]:6.2f} ms (goal ≤ 20)")


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark; prints human lines, then the JSON line."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--count", type=int, default=200, help="VMs to start at most (default 200)")
    p.add_argument("--payload", default="loop", help="built-in payload of every VM (default loop)")
    p.add_argument("--memory-mib", type=int, default=16, help="guest memory of each VM (default 16)")
    p.add_argument("--reserve-mib", type=float, default=1024, help="stop when MemAvailable would drop below this")
    p.add_argument("--settle", type=float, default=3.0, help="seconds the VMs run before measuring")
    p.add_argument("--cpu-window", type=float, default=3.0, help="seconds over which idle CPU is measured")
    p.add_argument("--calls", type=int, default=300, help="GetCapabilities and ListVms calls each (default 300)")
    args = p.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    flags = ["--max-vcpus", str(max(args.count, 1)), "--log-level", "warning"]
    result: dict[str, Any] = {}
    with agentproc.agent("scale", tuple(flags)) as (address, proc, _):
        stub = agentproc.stub(address)
        agent_rss0 = status_mib(proc.pid)
        fleet = Fleet(stub, args.payload, args.memory_mib)
        t0 = time.monotonic()
        try:
            fleet.grow(args.count, args.reserve_mib, lambda k: print(f"  {k} VMs", flush=True) if k % 50 == 0 else None)
            seconds = time.monotonic() - t0
            time.sleep(args.settle)
            result = measure(fleet, proc.pid, agent_rss0, args)
            report(result, fleet.stopped_by, seconds)
        except Interrupted as e:
            print(f"interrupted ({e}) with {len(fleet.vms)} VMs: cleaning up", file=sys.stderr)
            result = {"interrupted": str(e), "vms_created": len(fleet.vms)}
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)  # cleanup must finish: runners outlive the agent
            leftover = fleet.destroy_all()
            if leftover:
                print(f"{leftover} runners did not go through the agent and were killed", file=sys.stderr)
        result["stopped_by"] = fleet.stopped_by
    print(json.dumps(result))


if __name__ == "__main__":
    main()
