"""learn_ppc_host against the simulated kernels: learning a fixture's kernel gives back the fixture."""

from __future__ import annotations

import json

import pytest
from kvmplat.agent.platform.ppc import PpcHost
from kvmplat.lab.ppc.learn import cpuinfo_pvr, learn_ppc_host
from kvmplat.lab.ppc.sim import sim_fds
from ppc_cases import HOSTS

CPUINFO = "processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\nrevision\t: 2.2 (pvr 004e 1202)\n"


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_learn_reproduces_fixture(name: str) -> None:
    """Every field of a host is learnt from ioctl answers (the PVR from cpuinfo only when no VM can be made)."""
    host = HOSTS[name]
    cpuinfo = f"revision : 2.2 (pvr {host.pvr >> 16:04x} {host.pvr & 0xFFFF:04x})\n"
    learnt = learn_ppc_host(sim_fds(host), name=host.name, source=host.source, cpuinfo=cpuinfo)
    assert learnt == host


def test_learn_without_any_vm_uses_cpuinfo() -> None:
    """With no usable VM type (PPC_ON_TCG configuration B), the PVR still comes from /proc/cpuinfo."""
    learnt = learn_ppc_host(sim_fds(HOSTS["power9-nokvm"]), cpuinfo=CPUINFO)
    assert learnt.pvr == 0x004E1202 and learnt.accels == () and learnt.default_accel == ""


def test_cpuinfo_pvr_absent() -> None:
    """No pvr in the text gives 0."""
    assert cpuinfo_pvr("model name : x86") == 0 and cpuinfo_pvr(CPUINFO) == 0x004E1202


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_host_json_round_trip(name: str) -> None:
    """to_json/from_json are inverse and the data is plain JSON."""
    host = HOSTS[name]
    assert PpcHost.from_json(json.loads(json.dumps(host.to_json()))) == host


def test_a_pr_kernel_refusing_32bit_pvrs_is_learnt_and_the_agent_follows_it() -> None:
    """The kernel wins (issue 13 item 3): where book3s_pr does not take a 32-bit Book3S PVR, learning records it and
    arch PPC is refused saying so, instead of the prediction KVM_ABI.md would make."""
    import dataclasses

    from kvmplat.agent.errors import PlatformRefused
    from kvmplat.agent.platform.model import Abi, Arch, PlatformRequest
    from kvmplat.agent.platform.ppc import resolve_ppc
    from kvmplat.lab.ppc.learn import learn_ppc_host
    from kvmplat.lab.ppc.sim import sim_fds
    from ppc_cases import HOSTS

    stubborn = dataclasses.replace(HOSTS["power9-pr"], book3s32=False)
    learnt = learn_ppc_host(sim_fds(stubborn), name="stubborn")
    assert learnt.book3s32 is False and learn_ppc_host(sim_fds(HOSTS["power9-pr"])).book3s32 is True
    try:
        resolve_ppc(PlatformRequest(abi=Abi.BARE_METAL, arch=Arch.PPC), learnt)
    except PlatformRefused as e:
        assert e.field == "arch" and "did not take a 32-bit Book3S PVR" in e.reason
    else:
        raise AssertionError("arch PPC admitted on a PR kernel that refused a 32-bit PVR")
