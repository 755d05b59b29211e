"""OpenStack Placement traits: what a host publishes (from its measured capabilities) and what a spec requires.

Pure, no I/O: the agent publishes `traits_from_caps(caps)` on its resource provider, and `kvmplat place --placement`
asks `allocation_candidates` for `required_traits(spec.platform)`. Both sides use the names made here, so a host
whose agent admits a platform carries every trait that platform requires (a test checks it against a real agent).

Published (caps as GetCapabilities answers them, so a `--max-level` ceiling shows here too):
    HW_ARCH_<ARCH>                         os-traits' name of the host architecture (x86_64 -> HW_ARCH_X86_64)
    HW_CPU_X86_<FEATURE>                   os-traits' name of every CPU feature a probe guest SAW (never one that
                                           KVM only claims: kvm_pvm claims no SSE4.2 while guests see it)
    CUSTOM_KVMPLAT_ARCH_<ARCH>             CUSTOM_KVMPLAT_ABI_<ABI>           CUSTOM_KVMPLAT_PV_<PV>
    CUSTOM_KVMPLAT_ACCEL_<ACCEL>           every accelerator offered (kvm_pvm -> KVM_PVM, hv, pr)
    CUSTOM_KVMPLAT_LEVEL_<LEVEL>_STRICT    a level (x86-64 level or PowerPC compat mode) admitted under STRICT
    CUSTOM_KVMPLAT_LEVEL_<LEVEL>_BEST_EFFORT  ... admitted under BEST_EFFORT
Names are upper-cased, every run of other characters one `_` (x86-64-v2 -> X86_64_V2, power7+ -> POWER7_PLUS).
"""

from __future__ import annotations

from collections.abc import Iterable

import os_traits
from kvmplat.agent.platform.levels import parse_compat
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["CUSTOM", "FEATURE_TRAITS", "custom", "required_traits", "traits_from_caps"]

CUSTOM = "CUSTOM_KVMPLAT_"
# Linux /proc/cpuinfo names of the level features (levels.X86_FEATURES) -> os-traits names. Features os-traits has
# no name for (cx16, popcnt, lahf_lm, movbe, ...) are carried by the LEVEL traits instead.
FEATURE_TRAITS = {
    "mmx": "HW_CPU_X86_MMX",
    "sse": "HW_CPU_X86_SSE",
    "sse2": "HW_CPU_X86_SSE2",
    "sse3": "HW_CPU_X86_SSE3",
    "ssse3": "HW_CPU_X86_SSSE3",
    "sse4_1": "HW_CPU_X86_SSE41",
    "sse4_2": "HW_CPU_X86_SSE42",
    "fma": "HW_CPU_X86_FMA3",
    "avx": "HW_CPU_X86_AVX",
    "f16c": "HW_CPU_X86_F16C",
    "abm": "HW_CPU_X86_ABM",
    "bmi1": "HW_CPU_X86_BMI",
    "avx2": "HW_CPU_X86_AVX2",
    "bmi2": "HW_CPU_X86_BMI2",
    "avx512f": "HW_CPU_X86_AVX512F",
    "avx512dq": "HW_CPU_X86_AVX512DQ",
    "avx512cd": "HW_CPU_X86_AVX512CD",
    "avx512bw": "HW_CPU_X86_AVX512BW",
    "avx512vl": "HW_CPU_X86_AVX512VL",
}
ARCH_TRAITS = {"x86_64": "HW_ARCH_X86_64", "ppc64le": "HW_ARCH_PPC64LE", "ppc64": "HW_ARCH_PPC64", "ppc": "HW_ARCH_PPC"}


def custom(kind: str, name: str) -> str:
    """CUSTOM_KVMPLAT_<KIND>_<NAME> in Placement's trait alphabet (os-traits' normalize_name: A-Z, 0-9, _)."""
    return str(os_traits.normalize_name(f"KVMPLAT_{kind}_{name.replace('+', '-plus')}"))


def _levels(levels: Iterable[pb.CompatLevel]) -> Iterable[str]:
    for level in levels:
        if level.strict:
            yield custom("LEVEL", level.name + "_STRICT")
        if level.best_effort:
            yield custom("LEVEL", level.name + "_BEST_EFFORT")


def traits_from_caps(caps: pb.Capabilities) -> set[str]:
    """Every trait the capabilities justify (see the module docstring)."""
    out = {FEATURE_TRAITS[f.name] for f in caps.cpu_features if f.seen and f.name in FEATURE_TRAITS}
    if caps.arch:
        out.add(custom("ARCH", caps.arch))
        if caps.arch in ARCH_TRAITS:
            out.add(ARCH_TRAITS[caps.arch])
    out.update(custom("ABI", pb.Abi.Name(a)) for a in caps.abis if a)
    out.update(custom("PV", pb.Pv.Name(p)) for p in caps.pv if p)
    out.update(custom("ACCEL", a) for a in caps.accels)
    out.update(_levels(caps.levels))
    return out


def required_traits(platform: pb.PlatformSpec) -> list[str]:
    """The traits a host must have to be worth asking for `platform` (sorted); the agent still decides the rest
    (a raw PVR, bits). InvalidArgument (agent error tree) when `compat` names no level."""
    out = set()
    if platform.abi:
        out.add(custom("ABI", pb.Abi.Name(platform.abi)))
    out.update(custom("PV", pb.Pv.Name(p)) for p in platform.pv if p)
    if platform.accel in (pb.HV, pb.PR):
        out.add(custom("ACCEL", pb.Accel.Name(platform.accel)))
    if platform.compat.strip():
        compat = parse_compat(platform.compat)
        if compat.logical:
            policy = "BEST_EFFORT" if platform.compat_policy == pb.BEST_EFFORT else "STRICT"
            out.add(custom("LEVEL", f"{compat.name}_{policy}"))
    return sorted(out)
