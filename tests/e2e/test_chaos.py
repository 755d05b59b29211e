"""Faults at bad moments, against the real agent: the rounds of bench/chaos.py that found defects, kept as
regression tests (an agent killed in the middle of a DestroyVm; a runner whose agent died before recording it; the
runner template of a killed agent), an agent killed while a spare it recorded builds the VM (the next agent waits for
it, or finds it CRASHED when it died too), and a short chaos run (one round of each kind of moment, then the full-disk
check) whose counts must all be zero."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from agent_harness import AgentProc, children, comm, gone, loop_spec
from kvmplat.agent.registry.strays import RUNNER_COMM, runners_of, template_argv
from kvmplat.agent.runner.template import SPARE_COMM
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]
ROOT = Path(__file__).resolve().parents[2]


def fresh(agents: list[AgentProc]) -> AgentProc:
    """A new agent on a state dir of its own."""
    agents.append(AgentProc(Path(tempfile.mkdtemp(prefix="kvmplat-chaos-"))))
    return agents[-1]


def kill_and_restart(agents: list[AgentProc], meanwhile: Callable[[], None] = lambda: None) -> AgentProc:
    """SIGKILLs the newest agent, runs `meanwhile`, starts a new one on the same state dir."""
    old = agents[-1]
    old.proc.kill()
    old.proc.wait()
    old.channel.close()
    tmp, old.tmp = old.tmp, Path(tempfile.mkdtemp(prefix="kvmplat-chaos-dead-"))  # its close() keeps the state
    meanwhile()
    agents.append(AgentProc(tmp))
    return agents[-1]


def test_an_agent_killed_in_the_middle_of_a_destroy_leaves_nothing_behind(agents: list[AgentProc]) -> None:
    a = fresh(agents)
    a.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("d1"), start=True), timeout=30)
    a.stub.StopVm(pb.VmRequest(name="d1"), timeout=30)
    pid = a.get("d1").runner_pid
    os.kill(pid, signal.SIGSTOP)  # the runner will not answer the destroy
    pending = a.stub.DestroyVm.future(pb.VmRequest(name="d1"), timeout=60)
    record = a.state_dir / "vms" / "d1.json"
    deadline = time.monotonic() + 30
    while '"destroying": true' not in record.read_text():  # marked: the agent is about to tell the runner
        assert time.monotonic() < deadline, "DestroyVm never marked the record"
    b = kill_and_restart(agents, lambda: os.kill(pid, signal.SIGCONT))
    with pytest.raises(grpc.RpcError):
        pending.result()
    assert [v.spec.name for v in b.list_vms().vms] == []  # not a STOPPED VM whose runner has gone
    assert not record.exists() and runners_of(str(b.state_dir)) == []
    assert gone(pid)


def test_a_runner_whose_agent_died_before_recording_it_is_ended(agents: list[AgentProc]) -> None:
    a = fresh(agents)
    a.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("kept"), start=True), timeout=30)
    a.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("unrecorded"), start=True), timeout=30)
    kept, stray = a.get("kept").runner_pid, a.get("unrecorded").runner_pid
    state = a.state_dir
    b = kill_and_restart(agents, lambda: (state / "vms" / "unrecorded.json").unlink())  # as if never written
    assert [v.spec.name for v in b.list_vms().vms] == ["kept"] and b.get("kept").state == pb.RUNNING
    assert gone(stray) and not (state / "run" / "unrecorded.sock").exists()
    assert runners_of(str(state)) == [kept] and b.get("kept").runner_pid == kept


def _recorded_while_building(agents: list[AgentProc], name: str) -> tuple[int, grpc.Future]:
    """An agent whose spares are all stopped, asked for VM `name`: once its record names the spare handed the
    config (which cannot build it yet), the spare's pid and the pending CreateVm."""
    a = fresh(agents)
    template = next(p for p in children(a.proc.pid) if comm(p) != RUNNER_COMM)
    deadline = time.monotonic() + 30
    while len(spares := [p for p in children(template) if comm(p) == SPARE_COMM]) < 2:
        assert time.monotonic() < deadline, "the template's spares did not start"
        time.sleep(0.02)
    time.sleep(0.2)  # passed on to the agent
    for pid in spares:
        os.kill(pid, signal.SIGSTOP)
    pending = a.stub.CreateVm.future(pb.CreateVmRequest(spec=loop_spec(name), start=False), timeout=60)
    record = a.state_dir / "vms" / f"{name}.json"
    while not record.exists():
        assert time.monotonic() < deadline, "CreateVm never recorded the VM"
        time.sleep(0.01)
    pid = json.loads(record.read_text())["pid"]
    assert pid in spares
    return pid, pending


def test_an_agent_killed_while_a_recorded_spare_builds_the_vm_leaves_it_to_the_next(agents: list[AgentProc]) -> None:
    pid, pending = _recorded_while_building(agents, "b1")
    # the spare goes on once the next agent is starting: it builds, listens, and is adopted (not ended as a stray)
    b = kill_and_restart(agents, lambda: threading.Timer(1.0, os.kill, (pid, signal.SIGCONT)).start())
    with pytest.raises(grpc.RpcError):
        pending.result()  # its agent was killed: the caller cannot know, and finds the VM listed
    vm = b.get("b1")
    assert vm.state == pb.CREATED and vm.runner_pid == pid and runners_of(str(b.state_dir)) == [pid]
    b.stub.StartVm(pb.VmRequest(name="b1"), timeout=30)
    assert b.get("b1").state == pb.RUNNING


def test_a_recorded_spare_that_died_with_its_agent_leaves_a_crashed_vm(agents: list[AgentProc]) -> None:
    pid, pending = _recorded_while_building(agents, "b2")
    b = kill_and_restart(agents, lambda: os.kill(pid, signal.SIGKILL))
    with pytest.raises(grpc.RpcError):
        pending.result()
    assert b.get("b2").state == pb.CRASHED and runners_of(str(b.state_dir)) == []


def test_the_runner_template_of_a_killed_agent_is_ended(agents: list[AgentProc]) -> None:
    a = fresh(agents)
    a.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("t1"), start=True), timeout=30)
    argv = "\0".join(template_argv(str(a.state_dir))).encode()
    old = [p for p in _templates(argv) if Path(f"/proc/{p}/stat").read_text().split()[3] == str(a.proc.pid)]
    assert len(old) == 1
    spares = [p for p in children(old[0]) if comm(p) == SPARE_COMM]
    os.kill(old[0], signal.SIGSTOP)  # so it cannot notice its agent's death and exit on its own
    b = kill_and_restart(agents)
    assert gone(old[0]) and b.get("t1").state == pb.RUNNING
    assert len(_templates(argv)) == 1  # the new agent's
    deadline = time.monotonic() + 30
    while not all(gone(p) for p in spares):  # its link to the killed agent closed: it ends on its own
        assert time.monotonic() < deadline, f"the old template's spare {spares} outlived it"
        time.sleep(0.05)


def _templates(argv: bytes) -> list[int]:
    """Live runner templates (not runners) with this command line after the interpreter."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and argv in (proc / "cmdline").read_bytes()
                and (proc / "comm").read_text().strip() not in (RUNNER_COMM, SPARE_COMM)
                and not gone(int(proc.name))
            ):
                out.append(int(proc.name))
        except OSError:
            continue
    return out


def test_a_short_chaos_run_finds_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "bench/chaos.py", "--rounds", "4", "--seed", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, out.stdout + out.stderr
    assert summary["rounds"] == 4 and summary["agent_kills"] >= 4
    assert [summary[k] for k in ("vms_lost", "orphans", "event_gaps", "double_runs")] == [0, 0, 0, 0]
    assert summary["enospc_ok"] is True, out.stderr


def test_a_create_whose_caller_goes_away_leaves_no_runner_without_a_record(agent: AgentProc) -> None:
    """Found by a short chaos round: a CreateVm cancelled while its runner started left that runner unrecorded."""
    for i, delay in enumerate((0.0, 0.002, 0.005, 0.01, 0.02, 0.04)):
        call = agent.stub.CreateVm.future(pb.CreateVmRequest(spec=loop_spec(f"c{i}")), timeout=30)
        time.sleep(delay)
        call.cancel()
    deadline = time.monotonic() + 30
    while True:
        listed = {vm.runner_pid for vm in agent.list_vms().vms}
        runners = set(runners_of(str(agent.state_dir)))
        if runners <= listed:
            break
        assert time.monotonic() < deadline, f"runners {sorted(runners - listed)} have no VM record"
        time.sleep(0.05)
