"""Reliability against the real agent: SIGKILL of the agent (its VMs keep running and are re-adopted, obey
pause/resume/stop, and their event sequence continues without a gap), a corrupt or half-written state file (reported
and skipped), a runner that died while no agent watched, a runner killed under a running agent (its VM CRASHED with
a reason, the others unaffected), a hung runner (SIGSTOP: RPCs on other VMs still answer within their deadlines, and
an agent restarted meanwhile comes up and serves the rest), and sequence numbers that are never reused even when a
runner that flooded its console died while no agent watched."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from agent_harness import AgentProc, flood_kernel, kernel_spec, loop_spec
from kvmplat.agent.registry.controller import SEQ_BLOCK
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

Restart = Callable[[AgentProc], AgentProc]


def start(agents: list[AgentProc]) -> AgentProc:
    """A fresh agent with two running `loop` VMs, r1 and r2."""
    a = AgentProc(Path(tempfile.mkdtemp(prefix="kvmplat-rel-")))
    agents.append(a)
    for name in ("r1", "r2"):
        a.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec(name), start=True), timeout=30)
        a.wait_state(name, pb.RUNNING)
    return a


def kill_and_restart(agents: list[AgentProc], before: Callable[[], None] = lambda: None) -> AgentProc:
    """SIGKILLs the newest agent, runs `before` while none is running, starts a new one on the same state dir."""
    old = agents[-1]
    old.proc.kill()
    old.proc.wait()
    old.channel.close()
    tmp = old.tmp
    old.tmp = Path(tempfile.mkdtemp(prefix="kvmplat-rel-dead-"))  # its close() must not remove the live state
    before()
    new = AgentProc(tmp)
    agents.append(new)
    return new


def last_seq(a: AgentProc, vm: str) -> int:
    """The sequence number of the VM's newest event."""
    return list(a.stub.WatchEvents(pb.WatchEventsRequest(vm=vm), timeout=10))[-1].seq


def events_after(a: AgentProc, vm: str, since: int, until: Callable[[pb.Event], bool]) -> list[pb.Event]:
    """Events of `vm` after `since`, followed live until one satisfies `until`."""
    out = []
    for ev in a.stub.WatchEvents(pb.WatchEventsRequest(vm=vm, since_seq=since, follow=True), timeout=20):
        out.append(ev)
        if until(ev):
            break
    return out


def test_agent_sigkill_restart_readopts_running_vms(agents: list[AgentProc]) -> None:
    a = start(agents)
    pids = {n: a.get(n).runner_pid for n in ("r1", "r2")}
    seq1 = last_seq(a, "r1")
    b = kill_and_restart(agents)
    for name, pid in pids.items():
        vm = b.get(name)
        assert (vm.state, vm.runner_pid) == (pb.RUNNING, pid), vm
    b.stub.PauseVm(pb.VmRequest(name="r1"), timeout=10)
    b.wait_state("r1", pb.PAUSED)
    b.stub.ResumeVm(pb.VmRequest(name="r1"), timeout=10)
    b.stub.StopVm(pb.VmRequest(name="r1"), timeout=10)
    b.wait_state("r1", pb.STOPPED)
    evs = events_after(b, "r1", seq1, lambda e: e.HasField("state") and e.state.to == pb.STOPPED)
    seqs = [e.seq for e in evs]
    assert seqs == list(range(seq1 + 1, seq1 + 1 + len(seqs))), "sequence reused or gapped across the restart"
    states = [e.state.to for e in evs if e.HasField("state")]
    assert states[-3:] == [pb.PAUSED, pb.RUNNING, pb.STOPPED]
    assert b.get("r2").state == pb.RUNNING


def test_corrupt_state_files_are_reported_and_skipped(agents: list[AgentProc]) -> None:
    a = start(agents)
    vms = a.state_dir / "vms"

    def spoil() -> None:
        (vms / "half.json").write_text('{"name": "half", "spec": {"name": "ha')
        (vms / "list.json").write_text("[1, 2]")
        (vms / "nospec.json").write_text('{"name": "nospec"}')
        (vms / "badspec.json").write_text('{"name": "badspec", "spec": {"vcpus": "many"}, "socket": "/x"}')
        (vms / "badtypes.json").write_text(
            '{"name": "badtypes", "spec": {"name": "badtypes"}, "socket": "/x", "pid": []}'
        )
        (vms / "badname.json").write_text('{"name": "../x", "spec": {"name": "../x"}, "socket": "/x"}')
        (vms / "r1-copy.json").write_text((vms / "r1.json").read_text())  # a second record naming r1

    b = kill_and_restart(agents, spoil)
    assert sorted(vm.spec.name for vm in b.list_vms().vms) == ["r1", "r2"]
    assert {b.get(n).state for n in ("r1", "r2")} == {pb.RUNNING}
    log = b.log_path.read_text()
    for name in ("half", "list", "nospec", "badspec", "badtypes", "../x", "loaded already"):
        assert name in log, f"{name}.json skipped without a word: {log[-1500:]}"


def test_runner_dead_while_agent_was_down_is_crashed_with_reason(agents: list[AgentProc]) -> None:
    a = start(agents)
    pid = a.get("r2").runner_pid
    seq = last_seq(a, "r2")

    def kill_runner() -> None:
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    b = kill_and_restart(agents, kill_runner)
    vm = b.get("r2")
    assert vm.state == pb.CRASHED and "gone when the agent restarted" in vm.state_reason, vm
    crash = list(b.stub.WatchEvents(pb.WatchEventsRequest(vm="r2", since_seq=seq), timeout=10))[-1]
    assert crash.state.to == pb.CRASHED and crash.seq > seq + 1, "a possible gap must be visible in seq"
    assert b.get("r1").state == pb.RUNNING
    b.stub.DestroyVm(pb.VmRequest(name="r2"), timeout=10)


def test_runner_sigkill_crashes_only_its_vm(agents: list[AgentProc]) -> None:
    a = start(agents)
    pid = a.get("r2").runner_pid
    seq = last_seq(a, "r2")
    os.kill(pid, signal.SIGKILL)
    vm = a.wait_state("r2", pb.CRASHED, timeout=10)
    assert str(pid) in vm.state_reason and "RUNNING" in vm.state_reason, vm.state_reason
    crash = events_after(a, "r2", seq, lambda e: e.HasField("state") and e.state.to == pb.CRASHED)[-1]
    assert crash.state.reason == vm.state_reason
    a.stub.PauseVm(pb.VmRequest(name="r1"), timeout=10)
    a.wait_state("r1", pb.PAUSED)
    a.stub.ResumeVm(pb.VmRequest(name="r1"), timeout=10)
    assert a.get("r1").state == pb.RUNNING
    with pytest.raises(grpc.RpcError) as info:
        a.stub.StartVm(pb.VmRequest(name="r2"), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    a.stub.DestroyVm(pb.VmRequest(name="r2"), timeout=10)


def test_hung_runner_does_not_hang_rpcs_on_other_vms(agents: list[AgentProc]) -> None:
    a = start(agents)
    pid = a.get("r2").runner_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        r1 = pb.VmRequest(name="r1")
        # deadlines, not stopwatches: each call must complete well inside the hung runner's own 10 s wait
        calls = [
            lambda: a.stub.PauseVm(r1, timeout=5),
            lambda: a.stub.ResumeVm(r1, timeout=5),
            lambda: a.stub.GetVm(r1, timeout=5),
            lambda: a.stub.ListVms(pb.ListVmsRequest(), timeout=5),
            lambda: a.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=5),
        ]
        hung = a.stub.PauseVm.future(pb.VmRequest(name="r2"), timeout=30)  # waits on the stopped runner
        for call in calls * 3:
            call()
        assert not hung.done(), "the hung runner answered?"
        assert a.stub.GetVm(pb.VmRequest(name="r2"), timeout=5).state == pb.RUNNING, "GetVm gives up on its stats"
        with pytest.raises(grpc.RpcError) as info:
            hung.result()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "did not answer" in info.value.details()
    finally:
        os.kill(pid, signal.SIGCONT)


def test_agent_restarted_while_a_runner_is_hung_serves_the_others(agents: list[AgentProc]) -> None:
    a = start(agents)
    pid = a.get("r2").runner_pid

    def hang() -> None:
        # stopped once its old template has gone: the kernel continues a stopped member of a process group that its
        # parent's exit orphans (SIGHUP, which runners ignore, then SIGCONT), so a runner stopped earlier wakes then
        deadline = time.monotonic() + 30
        while int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != 1:
            assert time.monotonic() < deadline, "the old template never ended"
            time.sleep(0.02)
        os.kill(pid, signal.SIGSTOP)

    try:
        # AgentProc waits for GetCapabilities: the agent came up despite the hung runner
        b = kill_and_restart(agents, hang)
        assert b.stub.GetVm(pb.VmRequest(name="r1"), timeout=5).state == pb.RUNNING
        b.stub.PauseVm(pb.VmRequest(name="r1"), timeout=5)
        b.stub.ResumeVm(pb.VmRequest(name="r1"), timeout=5)
        vm = b.stub.GetVm(pb.VmRequest(name="r2"), timeout=5)
        assert vm.state == pb.RUNNING and "did not answer" in vm.state_reason, vm
        assert "r2" in b.log_path.read_text()
    finally:
        os.kill(pid, signal.SIGCONT)
    b.stub.PauseVm(pb.VmRequest(name="r2"), timeout=10)  # awake again, it obeys the new agent
    b.wait_state("r2", pb.PAUSED)


def test_sequence_numbers_are_never_reused_after_a_flood_and_a_lost_runner(agents: list[AgentProc]) -> None:
    images = Path(tempfile.mkdtemp(prefix="kvmplat-rel-img-"))
    try:
        kernel = flood_kernel(images, line=32)
        a = AgentProc(Path(tempfile.mkdtemp(prefix="kvmplat-rel-")), "--image-dir", str(images))
        agents.append(a)
        a.stub.CreateVm(pb.CreateVmRequest(spec=kernel_spec("f", kernel), start=True), timeout=30)
        seen = 0  # console lines carry the numbers well past the state changes the record was last written at
        for ev in a.stub.WatchEvents(pb.WatchEventsRequest(vm="f", follow=True), timeout=300):
            seen = ev.seq
            if seen > 2 * SEQ_BLOCK + 100:
                break
        pid = a.get("f").runner_pid

        def kill_runner() -> None:
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

        b = kill_and_restart(agents, kill_runner)
        crash = list(b.stub.WatchEvents(pb.WatchEventsRequest(vm="f"), timeout=10))[-1]
        assert crash.state.to == pb.CRASHED and "gone when the agent restarted" in crash.state.reason
        assert crash.seq > seen + 1, f"CRASHED reused seq {crash.seq} (a watcher saw {seen}) or hid the gap"
        assert [e.seq for e in b.stub.WatchEvents(pb.WatchEventsRequest(vm="f", since_seq=seen), timeout=10)] == [
            crash.seq
        ]
    finally:
        shutil.rmtree(images, ignore_errors=True)
