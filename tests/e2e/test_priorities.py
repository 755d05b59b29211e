"""CPU priorities on a real guest: a runner's vCPU threads run at GUEST_NICE, its other threads (the agent's
requests, the console) at the runner's own niceness, so a busy guest yields to the work that answers the agent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_harness import AgentProc, loop_spec
from kvmplat.agent.registry.strays import RUNNER_COMM
from kvmplat.agent.runner.vcpu import GUEST_NICE
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]


def nice_of_threads(pid: int) -> list[int]:
    """The niceness of each runner thread of `pid` (/proc/PID/task/TID/stat, field 19); KVM's own threads in the
    process (kvm-nx-lpage-recovery, started by the first KVM_RUN) are left out."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.joinpath("comm").read_text().strip() == RUNNER_COMM:
            out.append(int(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[16]))
    return out


def test_vcpu_threads_yield_to_the_runners_other_threads(agent: AgentProc) -> None:
    spec = loop_spec("nice", vcpus=2)
    agent.stub.CreateVm(pb.CreateVmRequest(spec=spec, start=True), timeout=30)
    pid = agent.wait_state("nice", pb.RUNNING).runner_pid
    own = os.getpriority(os.PRIO_PROCESS, pid)
    nices = nice_of_threads(pid)
    assert nices.count(GUEST_NICE) == 2 and own != GUEST_NICE
    assert sorted(set(nices)) == sorted({own, GUEST_NICE})
