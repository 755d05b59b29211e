"""Runner processes (agent/runner/template.py). The spares, runners forked before any VM asks, set up and waiting:
a CreateVm takes one (its pid becomes the VM's runner), the template forks the next one, dead spares cost at most
a fresh fork, a spare holds none of the template's other pipes and sockets, and it ends with its agent or its
template; a spare has the last VM's machine built ahead, which the next VM of that shape takes and one of another
shape does not. The handoff itself, as an agent sees it: a spare passed on the template's link, its Spawn and answer
on its own socket, which is then the runner's first agent connection. A runner's process group is its own (a Ctrl-C
for the agent does not reach it), its session its agent's (one CPU group), and SIGHUP, SIGTTOU and SIGTTIN cannot
end or stop it."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest
from agent_harness import AgentProc, children, comm, fd_targets, gone, loop_spec
from kvmplat.agent.runner.template import SPARE_COMM, SPARES
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]


def template_of(agent: AgentProc) -> int:
    """The agent's runner template (its child running kvmplat.agent.runner.template)."""
    return next(p for p in children(agent.proc.pid) if b"runner.template" in Path(f"/proc/{p}/cmdline").read_bytes())


def spares_of(template: int, timeout: float = 30.0) -> list[int]:
    """The template's spares, once all SPARES are set up (each one's name changes then)."""
    deadline = time.monotonic() + timeout
    while True:
        spares = [p for p in children(template) if comm(p) == SPARE_COMM]
        if len(spares) == SPARES:
            return spares
        assert time.monotonic() < deadline, f"the template has {len(spares)} spares set up, not {SPARES}"
        time.sleep(0.02)


def test_create_takes_the_spare_and_the_template_forks_the_next(agent: AgentProc) -> None:
    template = template_of(agent)
    spares = spares_of(template)
    vm = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("s1"), start=True), timeout=30)
    assert vm.runner_pid in spares and comm(vm.runner_pid) == "kvmplat-runner"
    following = next(p for p in spares_of(template) if p not in spares)
    pipes = {t for t in fd_targets(following) if t.startswith("pipe:")}
    # of the template's pipes it holds only its own readiness pipe (besides it: the console pipe of the machine it
    # built ahead), none of its elder's, nor the agent's (the stderr all share aside); of its sockets none of the
    # template's (its link to the agent, the agent's ends of spares not yet passed on)
    stderr = os.readlink(f"/proc/{template}/fd/2")
    assert len(pipes & set(fd_targets(template)) - {stderr}) == 1
    sockets = {t for t in fd_targets(following) if t.startswith("socket:")}
    assert len(sockets) == 1 and not sockets & set(fd_targets(template))
    agent.stub.StopVm(pb.VmRequest(name="s1"), timeout=10)
    agent.stub.DestroyVm(pb.VmRequest(name="s1"), timeout=10)


def test_dead_spares_cost_only_a_fresh_fork(agent: AgentProc) -> None:
    template = template_of(agent)
    spares = spares_of(template)
    for spare in spares:
        os.kill(spare, signal.SIGKILL)
    vm = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("s2"), start=True), timeout=30)
    assert vm.state == pb.RUNNING and vm.runner_pid not in spares
    assert not set(spares_of(template)) & {*spares, vm.runner_pid}


def _vm_fds(pid: int) -> set[str]:
    return {t for t in fd_targets(pid) if t.startswith("anon_inode:kvm-")}


def test_a_spare_builds_the_last_vms_machine_ahead_and_the_next_of_its_shape_takes_it(agent: AgentProc) -> None:
    template = template_of(agent)
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("p1"), start=True), timeout=30)
    deadline = time.monotonic() + 30
    # every spare: the agent drops those forked before any VM was asked for, with nothing built, for new ones
    while len(ahead := [p for p in spares_of(template) if "anon_inode:kvm-vm" in _vm_fds(p)]) < SPARES:
        assert time.monotonic() < deadline, f"{len(ahead)} spares of {SPARES} built the last VM's machine"
        time.sleep(0.02)
    vm = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("p2"), start=True), timeout=30)
    assert vm.runner_pid in ahead and vm.state == pb.RUNNING
    assert agent.get("p2").state == pb.RUNNING
    other = agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("p3", memory_mib=32), start=True), timeout=30)
    ram = {os.stat(f"/proc/{other.runner_pid}/fd/{fd}").st_size for fd in os.listdir(f"/proc/{other.runner_pid}/fd")}
    assert 32 << 20 in ram and 16 << 20 not in ram  # its own machine: the one built ahead (16 MiB) was freed
    for name in ("p1", "p2", "p3"):
        agent.stub.StopVm(pb.VmRequest(name=name), timeout=10)
        agent.stub.DestroyVm(pb.VmRequest(name=name), timeout=10)


def _all_gone(pids: list[int], what: str) -> None:
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_spare_ends_with_its_agent(agent: AgentProc) -> None:
    spares = spares_of(template_of(agent))
    agent.close()  # its link (the agent's end) closes, and the template ends when its agent closes its stdin
    _all_gone(spares, "a spare outlived its agent")


def test_a_spare_ends_with_its_template_while_the_agent_lives(agent: AgentProc) -> None:
    template = template_of(agent)
    spares = spares_of(template)
    os.kill(template, signal.SIGKILL)  # the agent still holds the spares' links: their readiness pipes tell them
    _all_gone(spares, "a spare outlived its template")


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
