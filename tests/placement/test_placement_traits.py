"""Traits without a Placement: what capabilities publish and what specs require (agent/platform/traits.py). Every
standard name exists in os-traits; every custom name is one Placement accepts; a level a host admits under a policy
yields exactly the trait a spec asking for that level and policy requires."""

from __future__ import annotations

import re

import os_traits
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.platform.levels import PPC_LEVELS, X86_FEATURES, X86_LEVELS
from kvmplat.agent.platform.traits import ARCH_TRAITS, FEATURE_TRAITS, custom, required_traits, traits_from_caps
from kvmplat.v1 import agent_pb2 as pb

CUSTOM_RE = re.compile(r"^CUSTOM_[A-Z0-9_]+$")  # Placement's rule for custom trait names (max 255)


def x86_caps() -> pb.Capabilities:
    """kvm_pvm-like capabilities: SSE4.2 seen but not claimed, ABM claimed but not seen, v2 best effort only."""
    caps = pb.Capabilities(arch="x86_64", abis=[pb.BARE_METAL], pv=[pb.KVM], accels=["kvm_pvm"])
    caps.cpu_features.add(name="sse4_2", level="x86-64-v2", claimed=False, seen=True, hideable=False)
    caps.cpu_features.add(name="abm", level="x86-64-v3", claimed=True, seen=False, hideable=True)
    caps.cpu_features.add(name="cx16", level="x86-64-v2", claimed=True, seen=True, hideable=True)
    caps.levels.add(name="x86-64-v1", strict=True, best_effort=True)
    caps.levels.add(name="x86-64-v2", strict=False, best_effort=True)
    caps.levels.add(name="x86-64-v3", strict=False, best_effort=False, missing=["abm"])
    return caps


def test_x86_traits_follow_what_guests_see_not_what_kvm_claims() -> None:
    assert traits_from_caps(x86_caps()) == {
        "HW_ARCH_X86_64",
        "HW_CPU_X86_SSE42",  # seen, though KVM does not claim it
        "CUSTOM_KVMPLAT_ARCH_X86_64",
        "CUSTOM_KVMPLAT_ABI_BARE_METAL",
        "CUSTOM_KVMPLAT_PV_KVM",
        "CUSTOM_KVMPLAT_ACCEL_KVM_PVM",
        "CUSTOM_KVMPLAT_LEVEL_X86_64_V1_STRICT",
        "CUSTOM_KVMPLAT_LEVEL_X86_64_V1_BEST_EFFORT",
        "CUSTOM_KVMPLAT_LEVEL_X86_64_V2_BEST_EFFORT",
    }  # no HW_CPU_X86_ABM (claimed, unseen); cx16 has no os-traits name


def test_ppc_compat_modes_and_accels_are_traits() -> None:
    caps = pb.Capabilities(arch="ppc64le", abis=[pb.SPAPR], pv=[pb.KVM], accels=["hv", "pr"])
    caps.levels.add(name="power9", strict=True, best_effort=True)
    caps.levels.add(name="power7+", strict=False, best_effort=True)
    t = traits_from_caps(caps)
    assert {"HW_ARCH_PPC64LE", "CUSTOM_KVMPLAT_ABI_SPAPR", "CUSTOM_KVMPLAT_ACCEL_HV", "CUSTOM_KVMPLAT_ACCEL_PR"} <= t
    assert {"CUSTOM_KVMPLAT_LEVEL_POWER9_STRICT", "CUSTOM_KVMPLAT_LEVEL_POWER7_PLUS_BEST_EFFORT"} <= t
    assert required_traits(pb.PlatformSpec(compat="isa-3.0", accel=pb.HV)) == [
        "CUSTOM_KVMPLAT_ACCEL_HV",
        "CUSTOM_KVMPLAT_LEVEL_POWER9_STRICT",
    ]
    assert required_traits(pb.PlatformSpec(compat="0x0f000005")) == ["CUSTOM_KVMPLAT_LEVEL_POWER9_STRICT"]
    assert required_traits(pb.PlatformSpec(compat="0x004e1202")) == []  # a raw processor PVR: the agent decides


def test_every_standard_name_is_an_os_trait() -> None:
    known = set(os_traits.get_traits())
    assert set(FEATURE_TRAITS.values()) <= known
    assert set(ARCH_TRAITS.values()) <= known
    assert set(FEATURE_TRAITS) <= {f.name for f in X86_FEATURES}


def test_a_spec_requires_what_an_admitting_host_publishes() -> None:
    caps = x86_caps()
    published = traits_from_caps(caps)
    for level in caps.levels:
        for policy, admitted in ((pb.STRICT, level.strict), (pb.BEST_EFFORT, level.best_effort)):
            spec = pb.PlatformSpec(abi=pb.BARE_METAL, pv=[pb.KVM], compat=level.name.upper(), compat_policy=policy)
            assert (set(required_traits(spec)) <= published) == admitted, (level.name, policy)
    assert required_traits(pb.PlatformSpec()) == []


def test_a_compat_that_names_no_level_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidArgument, match=r"spec\.platform\.compat"):
        required_traits(pb.PlatformSpec(compat="pentium"))


@given(
    st.sampled_from([*X86_LEVELS, *(lv.name for lv in PPC_LEVELS)]) | st.text(max_size=40),
    st.sampled_from(["LEVEL", "ACCEL", "ARCH"]),
)
def test_custom_names_are_valid_placement_traits(name: str, kind: str) -> None:
    t = custom(kind, name)
    assert CUSTOM_RE.match(t) and len(t) <= 255, t


def test_a_hardware_kvm_host_like_the_x86_lab_publishes_v3_strict_and_no_avx512() -> None:
    """The x86 lab's kvm-amd (reference/X86_LAB.md: CPUID honoured, all of x86-64-v3 seen, nothing of v4), through
    the agent's own capability code: every level up to v3 is STRICT, and no AVX-512 trait appears."""
    from kvmplat.agent.platform.proto import fill_capabilities
    from kvmplat.agent.platform.x86host import FeatureTruth, X86Host

    feats = tuple(
        FeatureTruth(f.name, f.level, claimed=f.level != "x86-64-v4", seen=f.level != "x86-64-v4", hideable=True)
        for f in X86_FEATURES
    )
    host = X86Host(accel="kvm-amd", supported=(), features=feats, hv_bit_hideable=True, kvm_leaves_hideable=True)
    caps = pb.Capabilities()
    fill_capabilities(caps, host)
    t = traits_from_caps(caps)
    assert {"HW_CPU_X86_AVX2", "HW_CPU_X86_ABM", "CUSTOM_KVMPLAT_ACCEL_KVM_AMD"} <= t
    assert {f"CUSTOM_KVMPLAT_LEVEL_X86_64_V{n}_STRICT" for n in (1, 2, 3)} <= t
    assert not {x for x in t if "AVX512" in x or "V4" in x}
