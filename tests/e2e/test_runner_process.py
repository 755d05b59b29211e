"""Runner processes (agent/runner/template.py). The spare, a runner forked before any VM asks, set up and waiting:
a CreateVm takes it (its pid becomes the VM's runner), the template forks the next one, a dead spare costs only a
fresh fork, a spare holds none of the template's other pipes, and it ends with its template. A runner's process
group is its own (a Ctrl-C for the agent does not reach it), its session its agent's (one CPU group), and SIGHUP,
SIGTTOU and SIGTTIN cannot end or stop it."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest
from agent_harness import AgentProc, children, comm, fd_targets, gone, loop_spec
from kvmplat.agent.runner.template import SPARE_COMM
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]


def template_of(agent: AgentProc) -> int:
    """The agent's runner template (its child running kvmplat.agent.runner.template)."""
    return next(p for p in children(agent.proc.pid) if b"runner.template" in Path(f"/proc/{p}/cmdline").read_bytes())


def spare_of(template: int, timeout: float = 30.0) -> int:
    """The template's spare, once it is set up (its name changes then)."""
    deadline = time.monotonic() + timeout
    while True:
        spares = [p for p in children(template) if comm(p) == SPARE_COMM]
        if spares:
            return spares[0]
        assert time.monotonic() < deadline, "the template has no spare"
        time.sleep(0.02)


def test_create_takes_the_spare_and_the_template_forks_the_next(agent: AgentProc) -> None:
    template = template_of(agent)
    spare = spare_of(template)
    vm = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("s1"), start=True), timeout=30)
    assert vm.runner_pid == spare and comm(spare) == "kvmplat-runner"
    following = spare_of(template)
    assert following != spare
    pipes = [t for t in fd_targets(following) if t.startswith("pipe:")]
    assert len(pipes) <= 3  # its config and readiness pipes, and the stderr it shares: none of its elder's
    agent.stub.StopVm(pb.VmRequest(name="s1"), timeout=10)
    agent.stub.DestroyVm(pb.VmRequest(name="s1"), timeout=10)


def test_a_dead_spare_costs_only_a_fresh_fork(agent: AgentProc) -> None:
    template = template_of(agent)
    spare = spare_of(template)
    os.kill(spare, signal.SIGKILL)
    vm = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("s2"), start=True), timeout=30)
    assert vm.state == pb.RUNNING and vm.runner_pid != spare
    assert spare_of(template) not in (spare, vm.runner_pid)


def test_a_spare_ends_with_its_template(agent: AgentProc) -> None:
    template = template_of(agent)
    spare = spare_of(template)
    agent.close()  # the template ends when its agent closes its stdin
    deadline = time.monotonic() + 30
    while not gone(spare):
        assert time.monotonic() < deadline, "the spare outlived its template"
        time.sleep(0.05)


def test_a_runner_has_a_process_group_of_its_own_in_its_agents_session(agent: AgentProc) -> None:
    vm = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("g"), start=True), timeout=30)
    pid, template = vm.runner_pid, template_of(agent)
    assert os.getpgid(pid) == pid != os.getpgid(template)  # a Ctrl-C for the agent's group does not reach it
    assert os.getsid(pid) == os.getsid(template)  # one CPU group with its agent where sessions are (autogroup)
    ignored = int(
        next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("SigIgn")).split()[1],
        16,
    )
    for sig in (signal.SIGHUP, signal.SIGTTOU, signal.SIGTTIN):
        assert ignored >> (sig - 1) & 1, f"{sig.name} is not ignored"
    os.kill(pid, signal.SIGHUP)
    assert agent.get("g").state == pb.RUNNING and not gone(pid)


def test_runners_share_one_guest_ram_filesystem(agent: AgentProc) -> None:
    """The template makes guest RAM's tmpfs once (ramfile.prepare): a tmpfs made per VM cost each CreateVm ~3 ms."""
    devices = []
    for name in ("m1", "m2"):
        pid = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec(name, memory_mib=16)), timeout=30).runner_pid
        ram = {
            (st.st_dev, st.st_ino)
            for fd in os.listdir(f"/proc/{pid}/fd")
            if (st := os.stat(f"/proc/{pid}/fd/{fd}")).st_size == 16 << 20 and stat.S_ISREG(st.st_mode)
        }
        assert len(ram) == 1, f"runner {pid} has {len(ram)} guest RAM files"  # (mmap holds a dup of its fd)
        devices.append(ram.pop()[0])
    assert devices[0] == devices[1]
