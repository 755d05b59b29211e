"""bench/chaos.py's observers: the watcher that follows every VM across agent restarts and checks each VM's sequence,
and the checks of a round (VMs lost, orphan runners, VMs running twice, states that do not match their runner)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from kvmplat.agent.registry.strays import runners_of
from kvmplat.v1 import agent_pb2 as pb

LIVE = (pb.CREATED, pb.RUNNING, pb.PAUSED)


class Watcher(threading.Thread):
    """Follows every VM; after a broken stream (the agent was killed) watches again and resumes each VM after the
    last sequence number it received. Counts gaps: an event other than the next number, except the CRASHED event
    the agent itself writes past a reserved block when a runner died unobserved (the designed, visible gap)."""

    def __init__(self, stub: Any) -> None:
        super().__init__(daemon=True)
        self.stub, self.last, self.gaps, self.events, self.reconnects = stub, dict[str, int](), 0, 0, 0
        self.gap_detail: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.call: Any = None
        self.attached = threading.Event()  # set each time a stream is open (the catch-up moment follows)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.call = self.stub.WatchEvents(pb.WatchEventsRequest(follow=True))
                self.attached.set()
                for ev in self.call:
                    self.take(ev)
            except grpc.RpcError:
                self.attached.clear()
                self.reconnects += 1
                self.stop.wait(0.05)

    def take(self, ev: pb.Event) -> None:
        """Checks one event against the VM's last number (a replay after reconnecting repeats older ones)."""
        with self.lock:
            self.events += 1
            prev = self.last.get(ev.vm)
            if prev is not None and ev.seq <= prev:
                return  # replayed: seen before the reconnect
            expected = 1 if prev is None else prev + 1
            if ev.seq != expected and not _agent_crash(ev):
                self.gaps += 1
                self.gap_detail.append(f"{ev.vm}: {prev} -> {ev.seq} ({ev.WhichOneof('kind')})")
            self.last[ev.vm] = ev.seq

    def caught_up(self, vms: list[pb.Vm], timeout: float = 10.0) -> list[str]:
        """Waits until the watcher has each VM's newest event; returns the VMs it never got to."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                behind = [v.spec.name for v in vms if self.last.get(v.spec.name, 0) < v.last_seq]
            if not behind or time.monotonic() > deadline:
                return behind
            time.sleep(0.02)

    def close(self) -> None:
        """Ends the stream and the thread."""
        self.stop.set()
        if self.call is not None:
            self.call.cancel()
        self.join(5)


def _agent_crash(ev: pb.Event) -> bool:
    """The agent's own CRASHED event for a runner that died while unobserved (it skips a reserved block)."""
    return ev.WhichOneof("kind") == "state" and ev.state.to == pb.CRASHED and ev.state.reason.startswith("runner (pid")


@dataclass
class Findings:
    """What the checks of one round found (every count should be zero)."""

    vms_lost: int = 0
    orphans: int = 0
    double_runs: int = 0
    mismatches: int = 0
    detail: list[str] = field(default_factory=list)

    def note(self, kind: str, text: str) -> None:
        """Counts one finding of `kind` and keeps its description."""
        setattr(self, kind, getattr(self, kind) + 1)
        self.detail.append(f"{kind}: {text}")


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def runner_names(state_dir: str) -> dict[int, str]:
    """Each live runner of `state_dir` and the VM it serves (the socket it listens on)."""
    paths = {}
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) >= 8 and cols[7].endswith(".sock"):
                paths[cols[6]] = Path(cols[7]).stem
    out = {}
    for pid in runners_of(state_dir):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in paths:
                    out[pid] = paths[target[8:-1]]
    return out


def wait_for_builds(stub: Any, state_dir: str, timeout: float = 15.0) -> None:
    """Waits (bounded) until every runner of `state_dir` is named by a listed VM. A CreateVm whose caller went away
    (its deadline, a broken connection) still builds its VM to the end: until then its runner has no record yet, and
    that is a build in flight, not an orphan. A runner still unnamed after `timeout` is reported by the checks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recorded = {v.runner_pid for v in stub.ListVms(pb.ListVmsRequest(), timeout=30).vms}
        if set(runner_names(state_dir)) <= recorded:
            return
        time.sleep(0.1)


def _whence(pid: int, name: str, state_dir: str) -> str:
    """What tells how a runner came to be unrecorded: its parents, and whether a record file names its VM."""
    chain = []
    with contextlib.suppress(OSError, IndexError):
        for _ in range(3):  # the runner, its parent, the parent's parent: which template, which agent
            stat = Path(f"/proc/{pid}/stat").read_text()
            chain.append(f"{pid} {stat[stat.index('(') : stat.rindex(')') + 1]}")
            pid = int(stat.rsplit(")", 1)[1].split()[1])
    record = Path(state_dir, "vms", f"{name}.json")
    return f"{' < '.join(chain)}; record file {'present' if record.exists() else 'absent'}"


def check_processes(vms: list[pb.Vm], state_dir: str, found: Findings) -> None:
    """No runner without a record, no VM with two runners, no live VM whose runner is dead (a STOPPED VM may have
    none: StartVm boots it in a fresh runner)."""
    runners = runner_names(state_dir)
    recorded = {v.runner_pid for v in vms}
    per_name = Counter(runners.values())
    for pid, name in runners.items():
        if pid not in recorded:
            found.note("orphans", f"runner {pid} of {name!r} has no record ({_whence(pid, name, state_dir)})")
    for name, n in per_name.items():
        if n > 1:
            found.note("double_runs", f"{name!r} has {n} runners")
    for v in vms:
        if v.state in LIVE and not alive(v.runner_pid):
            found.note("vms_lost", f"{v.spec.name} is {pb.VmState.Name(v.state)} but its runner {v.runner_pid} is dead")


def check_states(stub: Any, vms: list[pb.Vm], found: Findings) -> None:
    """The agent's state of each live VM is its runner's: the runner itself accepts the next request."""
    steps = {pb.RUNNING: ("PauseVm", "ResumeVm"), pb.PAUSED: ("ResumeVm",), pb.CREATED: ("StartVm",)}
    for v in vms:
        for rpc in steps.get(v.state, ()):
            try:
                getattr(stub, rpc)(pb.VmRequest(name=v.spec.name), timeout=15)
            except grpc.RpcError as e:
                found.note("mismatches", f"{v.spec.name} listed {pb.VmState.Name(v.state)}: {rpc} {e.code().name}")
                break


def check_told(vms: list[pb.Vm], told: set[str], found: Findings) -> None:
    """Every VM a client was told exists (and not told destroyed) is listed."""
    listed = {v.spec.name for v in vms}
    for name in sorted(told - listed):
        found.note("vms_lost", f"{name} was created (the client was told) but is not listed")
