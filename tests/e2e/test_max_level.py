"""An agent's level ceiling (issue 13 item 4) on the real agent and real KVM: `kvmplat-agent --max-level x86-64-v2`
offers nothing above it. Host-agnostic: on kvm_pvm (which cannot hide most features) and on hardware KVM alike the
guest sees no feature above the ceiling except those the effective platform names as visible (none where the
host honours the CPUID table). The x86 lab runs this file on its hardware KVM: tests/e2e/test_max_level.py."""

from __future__ import annotations

import re
import subprocess

import pytest
from agent_harness import AGENT, AgentFactory, AgentProc
from kvmplat.agent.platform.levels import X86_FEATURES
from kvmplat.client.errors import FailedPrecondition
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]
CEILING = "x86-64-v2"
ABOVE = {f.name for f in X86_FEATURES if f.level in ("x86-64-v3", "x86-64-v4")}
CPUID = re.compile(r"cpuid ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8})")
REG = {"eax": 0, "ebx": 1, "ecx": 2, "edx": 3}


def _spec(name: str, builtin: str = "loop", **platform: object) -> pb.VmSpec:
    return pb.VmSpec(
        name=name, vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin=builtin), platform=pb.PlatformSpec(**platform)
    )


@pytest.fixture
def capped(agent_factory: AgentFactory) -> AgentProc:
    return agent_factory("--max-level", CEILING)


def test_caps_show_the_ceiling(capped: AgentProc) -> None:
    """caps: max_level set, v3/v4 above the ceiling and admitted under neither policy, v1/v2 as the host has them."""
    caps = capped.client.capabilities()
    assert caps.max_level == CEILING and list(caps.arches) == [pb.X86_64]
    levels = {lv.name: lv for lv in caps.levels}
    for name in ("x86-64-v3", "x86-64-v4"):
        lv = levels[name]
        assert lv.above_ceiling and not lv.strict and not lv.best_effort and lv.above_ceiling_features
    assert not levels["x86-64-v2"].above_ceiling and not levels["x86-64-v1"].above_ceiling


@pytest.mark.parametrize("policy", [pb.STRICT, pb.BEST_EFFORT])
def test_a_level_above_the_ceiling_is_refused_naming_the_features(capped: AgentProc, policy: int) -> None:
    with pytest.raises(FailedPrecondition) as e:
        capped.client.check_platform(_spec("a", compat="x86-64-v3", compat_policy=policy, pv=[pb.KVM]))
    assert "ceiling" in str(e.value) and "avx2" in str(e.value) and "fma" in str(e.value)


def test_the_hosts_own_level_means_the_ceiling_in_the_guest(capped: AgentProc) -> None:
    """compat unset, BEST_EFFORT: the probe guest's CPUID hides every v3/v4 feature the host can hide; what it still
    sees is exactly what the effective platform names as visible above the level."""
    spec = _spec("g", "probe", compat_policy=pb.BEST_EFFORT, pv=[pb.KVM])
    eff = capped.client.check_platform(spec)
    assert eff.compat == CEILING
    capped.client.create_vm(spec, start=True)
    capped.wait_state("g", pb.STOPPED, timeout=60)
    text = "".join(e.console.text for e in capped.client.watch_events("g", follow=False))
    rows = {(int(m[1], 16), int(m[2], 16)): [int(m[i], 16) for i in range(3, 7)] for m in CPUID.finditer(text)}
    assert rows, text[-500:]
    seen = {
        f.name for f in X86_FEATURES if (f.leaf, f.subleaf) in rows and rows[f.leaf, f.subleaf][REG[f.reg]] >> f.bit & 1
    }
    assert seen & ABOVE == set(eff.visible_above_level)


def test_a_bad_ceiling_stops_the_agent_at_once() -> None:
    """--max-level takes an x86 level on x86: a PowerPC level or a typo is a usage error (exit 2) naming it."""
    for bad in ("power9", "x86-64-v9"):
        done = subprocess.run([AGENT, "--max-level", bad], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2 and bad in done.stderr
