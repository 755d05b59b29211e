"""The lifecycle does what it says on real guests: pause stops the vCPUs (no ticks, no exits), stop ends the vCPU
threads and closes the KVM fds, destroy frees the runner process, its socket, its state file and the agent's fds;
probe runs on every vCPU; WatchEvents resumes without gaps or repeats; WatchEventBatches carries the same bytes."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest
from agent_harness import AgentProc, fd_targets, loop_spec, steady_fds
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

KVM_FD = re.compile(r"^(/dev/kvm|anon_inode:kvm-vm|anon_inode:kvm-vcpu.*)$")


def events(agent: AgentProc, name: str, since: int = 0) -> list[pb.Event]:
    """The VM's events after `since`, without following."""
    return list(agent.stub.WatchEvents(pb.WatchEventsRequest(vm=name, since_seq=since), timeout=10))


def ticks(evs: list[pb.Event]) -> list[str]:
    """The loop guest's tick lines among `evs`."""
    return [e.console.text for e in evs if e.WhichOneof("kind") == "console" and "tick" in e.console.text]


def wait_tick(agent: AgentProc, name: str, since: int, timeout: float = 5.0) -> int:
    """Waits for a tick after `since`; returns the seq of the last event seen."""
    deadline = time.monotonic() + timeout
    while not ticks(evs := events(agent, name, since)):
        assert time.monotonic() < deadline, f"no tick from {name} within {timeout} s"
        time.sleep(0.1)
    return int(evs[-1].seq)


def tasks(pid: int) -> int:
    """Threads of process `pid`."""
    return len(os.listdir(f"/proc/{pid}/task"))


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Waits until `pid` has left /proc (a zombie still counts as present)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"runner {pid} still in /proc after {timeout} s"
        time.sleep(0.05)


def test_pause_really_stops_the_vcpus(agent: AgentProc) -> None:
    """While `p` is paused, a second loop guest ticks twice: a PIT second in which `p` would have ticked and
    exited had its vCPUs run (its guest clock, not a sleep, measures the pause)."""
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("p"), start=True), timeout=30)
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("clock"), start=True), timeout=30)
    seq = wait_tick(agent, "p", 0)
    paused = agent.stub.PauseVm(pb.VmRequest(name="p"), timeout=10)
    assert paused.state == pb.PAUSED
    exits = agent.get("p").stats.exits
    assert paused.stats.exits == exits > 0  # the reply's counters are the runner's as it paused, not a blank
    wait_tick(agent, "clock", wait_tick(agent, "clock", agent.get("clock").last_seq))
    assert agent.get("p").stats.exits == exits, "exits grew while PAUSED"
    assert ticks(events(agent, "p", paused.last_seq)) == [], "the guest ticked while PAUSED"
    agent.stub.ResumeVm(pb.VmRequest(name="p"), timeout=10)
    wait_tick(agent, "p", max(seq, paused.last_seq))
    assert agent.get("p").stats.exits > exits


@pytest.mark.parametrize("vcpus", [1, 4])
def test_stop_ends_vcpu_threads_and_closes_kvm_fds(agent: AgentProc, vcpus: int) -> None:
    created = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("s", vcpus=vcpus)), timeout=30)
    pid = created.runner_pid
    with_vcpus = tasks(pid)
    # /dev/kvm, the VM, each vCPU (CPython's mmap holds a dup of each vCPU fd for its kvm_run mapping)
    assert len({t for t in fd_targets(pid) if KVM_FD.match(t)}) == vcpus + 2
    agent.stub.StartVm(pb.VmRequest(name="s"), timeout=10)
    wait_tick(agent, "s", 0)
    agent.stub.StopVm(pb.VmRequest(name="s"), timeout=10)
    # the kernel's side of the VM is freed just after the reply (closing a VM fd waits out an SRCU grace period)
    deadline = time.monotonic() + 5
    while [t for t in fd_targets(pid) if KVM_FD.match(t)] and time.monotonic() < deadline:
        time.sleep(0.02)
    idle = tasks(pid)
    assert idle <= with_vcpus - vcpus, f"{idle} threads left of {with_vcpus} after stopping {vcpus} vCPUs"
    assert [t for t in fd_targets(pid) if KVM_FD.match(t)] == []
    assert agent.get("s").state == pb.STOPPED


def test_stopped_runner_idles_at_the_same_baseline_whatever_its_vcpus(agent: AgentProc) -> None:
    idle = {}
    for vcpus in (1, 4):
        name = f"b{vcpus}"
        pid = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec(name, vcpus=vcpus), start=True)).runner_pid
        agent.stub.StopVm(pb.VmRequest(name=name), timeout=10)
        time.sleep(0.2)
        idle[vcpus] = tasks(pid)
    assert idle[1] == idle[4], idle


@pytest.mark.parametrize("end", ["created", "stopped", "crashed"])
def test_destroy_frees_everything(agent: AgentProc, end: str) -> None:
    agent_fds = steady_fds(agent)
    vm = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("d", vcpus=2), start=end != "created"), timeout=30)
    socket_file = agent.state_dir / "run" / "d.sock"
    state_file = agent.state_dir / "vms" / "d.json"
    assert socket_file.exists() and state_file.exists() and steady_fds(agent) > agent_fds
    if end == "stopped":
        agent.stub.StopVm(pb.VmRequest(name="d"), timeout=10)
    elif end == "crashed":
        os.kill(vm.runner_pid, signal.SIGKILL)
        agent.wait_state("d", pb.CRASHED)
    agent.stub.DestroyVm(pb.VmRequest(name="d"), timeout=10)
    assert not socket_file.exists() and agent.list_vms().vms == []
    wait_gone(vm.runner_pid)
    deadline = time.monotonic() + 10  # the record's removal is queued behind nothing, not waited for
    while state_file.exists():
        assert time.monotonic() < deadline, "the destroyed VM's record stayed"
        time.sleep(0.01)
    assert steady_fds(agent) == agent_fds
    assert agent.list_vms().vms == []


def test_client_destroy_all_ends_vms_in_every_state(agent: AgentProc) -> None:
    pids = [
        agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec(n), start=n != "c"), timeout=30).runner_pid
        for n in ("c", "r", "p", "s")
    ]
    agent.stub.PauseVm(pb.VmRequest(name="p"), timeout=10)
    agent.stub.StopVm(pb.VmRequest(name="s"), timeout=10)
    agent.client.destroy_all()
    assert agent.list_vms().vms == []
    for pid in pids:
        wait_gone(pid)


def test_a_vm_recreated_at_once_keeps_its_socket(agent: AgentProc) -> None:
    """The old runner, ending after its destroy, must not remove the socket the new runner of the same name made:
    without it a restarted agent could not re-adopt the new VM."""
    for _ in range(5):
        old = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("again"), start=True), timeout=30)
        agent.stub.StopVm(pb.VmRequest(name="again"), timeout=10)
        agent.stub.DestroyVm(pb.VmRequest(name="again"), timeout=10)
        new = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("again"), start=True), timeout=30)
        wait_gone(old.runner_pid)  # the old runner has ended: whatever it did on its way out is done
        assert (agent.state_dir / "run" / "again.sock").exists()
        assert agent.get("again").runner_pid == new.runner_pid
        agent.stub.StopVm(pb.VmRequest(name="again"), timeout=10)
        agent.stub.DestroyVm(pb.VmRequest(name="again"), timeout=10)
        wait_gone(new.runner_pid)


@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_probe_prints_a_line_per_vcpu_and_powers_off(agent: AgentProc, vcpus: int) -> None:
    spec = loop_spec("probe", vcpus=vcpus, builtin="probe")
    agent.stub.CreateVm(pb.CreateVmRequest(spec=spec, start=True), timeout=30)
    vm = agent.wait_state("probe", pb.STOPPED, timeout=60)
    assert vm.state_reason == "guest poweroff"
    text = "".join(e.console.text for e in events(agent, "probe") if e.WhichOneof("kind") == "console")
    lines = re.findall(r"^kvmplat-probe cpu (\d+) of (\d+)$", text, re.MULTILINE)
    assert len(lines) == vcpus, text
    assert {int(m) for _, m in lines} == {vcpus}
    assert len({n for n, _ in lines}) == vcpus


def _read(stream: object, count: int) -> list[int]:
    """Seqs of the next `count` events of a followed stream."""
    out = []
    for ev in stream:  # type: ignore[attr-defined]
        out.append(ev.seq)
        if len(out) == count:
            break
    return out


def test_watch_events_resumes_without_gaps_or_repeats(agent: AgentProc) -> None:
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("w"), start=True), timeout=30)
    seen: list[int] = []
    for round_ in range(4):
        stream = agent.stub.WatchEvents(pb.WatchEventsRequest(vm="w", since_seq=seen[-1] if seen else 0, follow=True))
        seen += _read(stream, 2)
        stream.cancel()
        for verb in ("PauseVm", "ResumeVm") * (round_ + 1):  # events made while nobody watches
            getattr(agent.stub, verb)(pb.VmRequest(name="w"), timeout=10)
    last = agent.get("w").last_seq
    rest = agent.stub.WatchEvents(pb.WatchEventsRequest(vm="w", since_seq=seen[-1], follow=True))
    seen += _read(rest, last - seen[-1])
    rest.cancel()
    assert seen == list(range(1, last + 1))
    assert [e.seq for e in events(agent, "w", 3)][: last - 3] == list(range(4, last + 1))


def test_event_batches_carry_what_watch_events_sends_byte_for_byte(agent: AgentProc) -> None:
    plain = agent.stub.WatchEvents(pb.WatchEventsRequest(follow=True))
    batched = [agent.stub.WatchEventBatches(pb.WatchEventsRequest(follow=True)) for _ in range(2)]
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("b"), start=True), timeout=30)
    for verb in ("PauseVm", "ResumeVm") * 5 + ("StopVm",):
        getattr(agent.stub, verb)(pb.VmRequest(name="b"), timeout=10)
    last = agent.get("b").last_seq
    want = [e.SerializeToString() for e in _take(iter(plain), last)]
    for stream in batched:
        got = [e.SerializeToString() for e in _take((e for b in stream for e in b.events), last)]
        assert got == want
    assert [pb.Event.FromString(d).seq for d in want] == list(range(1, last + 1))
    since = [
        e.SerializeToString()
        for b in agent.stub.WatchEventBatches(pb.WatchEventsRequest(vm="b", since_seq=3), timeout=10)
        for e in b.events
    ]
    assert since == want[3:]  # resumption after since_seq, as WatchEvents
    for call in (plain, *batched):
        call.cancel()


def _take(events: Iterator[pb.Event], count: int) -> list[pb.Event]:
    """The next `count` events of a followed stream."""
    return [next(events) for _ in range(count)]
