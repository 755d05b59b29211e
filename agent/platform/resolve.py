"""Resolution: a declared platform + the host's measured truth → the effective platform, or a refusal. Pure.

x86 rules (issue 3 item 3):
- abi: only BARE_METAL (the PC platform); SPAPR/BOOKE are refused as cross-architecture (kvmplat does not
  emulate another architecture, so `cross_arch` is always false here). accel HV/PR are PowerPC-only.
- compat: empty = the host's own level (nothing masked). A level is admitted under STRICT only if guests see every
  feature up to it and a table can hide every feature above it; under BEST_EFFORT features above it that cannot be
  hidden stay visible and are named in `notes` and `visible_above_level`. Features missing below the level are
  refused under both policies: software built for the level would fault, which is not a degradation.
- pv: none = the bare-metal look (hypervisor bit clear, no 0x4000_0000 leaves); where the host cannot hide those,
  STRICT refuses and BEST_EFFORT notes it (compat_policy governs the whole CPUID shape). KVM needs KVM's leaves in
  the supported list; HYPERV needs KVM's Hyper-V emulation.
- bits: 64, or 32 for i686 guests: long mode (lm) is cleared in CPUID (noted where the host cannot hide it); an
  x86-64 level with bits 32 is a contradiction (InvalidArgument).
- arch: X86_64 only (a PowerPC arch is refused naming both, arch.settle_x86); bits 0 = 64.
- ceiling (`max_level`, ceiling.py): compat empty means the ceiling; a level above it is refused naming the features
  above it. A 32-bit guest under a ceiling gets the ceiling's mask (and lm cleared).
Refusals are PlatformRefused(field, asked, reason, offered) with field one of arch, abi, pv, compat, bits, accel.
"""

from __future__ import annotations

import importlib
from typing import Any

from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.arch import settle_x86
from kvmplat.agent.platform.ceiling import ceiling_x86
from kvmplat.agent.platform.levels import X86_LEVELS, parse_compat
from kvmplat.agent.platform.model import Abi, Accel, CompatPolicy, EffectivePlatform, PlatformRequest, Pv
from kvmplat.agent.platform.x86host import FeatureTruth, X86Host

__all__ = ["admitted_levels", "level_culprits", "resolve"]

PVM_NOTE = (
    "accel kvm_pvm: guest instructions are emulated (about 1 µs each, thousands of times slower than hardware KVM) "
    "unless the guest kernel is built for PVM"
)


def resolve(request: PlatformRequest, host: Any, max_level: str = "") -> EffectivePlatform:
    """The effective platform of `request` on `host` (X86Host or PpcHost) under the agent's ceiling `max_level`;
    PlatformRefused/InvalidArgument."""
    if isinstance(host, X86Host):
        return _resolve_x86(request, host, max_level)
    ppc = importlib.import_module("kvmplat.agent.platform.ppc")  # the PowerPC module loads only for ppc hosts
    if isinstance(host, ppc.PpcHost):
        result: EffectivePlatform = ppc.resolve_ppc(request, host, max_level)
        return result
    raise TypeError(f"no platform resolution for host truth of type {type(host).__name__}")


def _resolve_x86(request: PlatformRequest, host: X86Host, max_level: str) -> EffectivePlatform:
    request = settle_x86(request, host.arch)
    _check_abi_accel_bits(request, host)
    request, implied = ceiling_x86(request, max_level)
    notes: list[str] = []
    name, raw, visible = _x86_compat(request, host, notes, max_level, implied)
    _x86_pv(request, host, notes)
    if request.bits == 32 and host.feature("lm").seen and not host.feature("lm").hideable:
        notes.append("bits 32: this host cannot hide long mode (lm) from guests; a 32-bit guest sees it")
    if host.accel == "kvm_pvm":
        notes.append(PVM_NOTE)
    return EffectivePlatform(
        abi=Abi.BARE_METAL,
        pv=tuple(sorted(request.pv)),
        compat=name,
        compat_raw=raw,
        policy=request.policy,
        bits=request.bits,
        accel=host.accel,
        cross_arch=False,
        notes=tuple(notes),
        visible_above_level=visible,
        arch=request.arch,
    )


def _check_abi_accel_bits(request: PlatformRequest, host: X86Host) -> None:
    """Refuses what x86 has no room for: PowerPC abis and accelerators, and bits other than 32/64."""
    if request.abi not in (None, Abi.BARE_METAL):
        raise PlatformRefused(
            "abi",
            request.abi.name,
            f"this host is {host.arch}; {request.abi.name} guests need a PowerPC host (kvmplat does not emulate "
            "another architecture)",
            "BARE_METAL",
        )
    if request.accel != Accel.AUTO:
        raise PlatformRefused(
            "accel",
            request.accel.name,
            f"{request.accel.name} (book3s_{request.accel.name.lower()}) is a PowerPC accelerator and this host is "
            f"{host.arch}",
            f"AUTO ({host.accel})",
        )
    if request.bits not in (32, 64):
        raise InvalidArgument.field("spec.platform.bits", f"{request.bits} is not a guest width (64, or 32)")


def _x86_compat(
    request: PlatformRequest, host: X86Host, notes: list[str], max_level: str = "", ceiling: bool = False
) -> tuple[str, int, tuple[str, ...]]:
    """(canonical name, raw value, features visible above the level) for the compat asked (or the agent's ceiling
    standing in for the host's own level when `ceiling`)."""
    if not request.compat.strip():
        return "", 0, ()
    compat = parse_compat(request.compat)
    if compat.arch != "x86":
        raise PlatformRefused(
            "compat",
            compat.name,
            f"{compat.name} is a PowerPC level and this host is {host.arch}",
            _offer(host, max_level),
        )
    if request.bits == 32 and not ceiling:
        raise InvalidArgument.field(
            "spec.platform.bits", f"32-bit guests have no x86-64 level (compat {compat.name}); use bits 64"
        )
    missing, unhideable = level_culprits(host, compat.name)
    asked = f"{compat.name} ({request.policy.name})"
    if ceiling:
        asked = f"{compat.name}, this agent's ceiling (--max-level) for the host's own level ({request.policy.name})"
    if missing or (unhideable and request.policy == CompatPolicy.STRICT):
        raise PlatformRefused("compat", asked, _culprit_text(missing, unhideable), _offer(host, max_level))
    if unhideable:
        notes.append(f"compat {asked}: {_hide_text(unhideable)}; they stay visible")
    return compat.name, compat.raw, tuple(f.name for f in unhideable)


def level_culprits(host: X86Host, level: str) -> tuple[list[FeatureTruth], list[FeatureTruth]]:
    """(features up to `level` guests do not see, features above it guests see and a table cannot hide)."""
    return host.missing(level), host.unhideable(level)


def _by_level(feats: list[FeatureTruth]) -> str:
    """'fma, movbe (x86-64-v3), avx512f (x86-64-v4)': names grouped by the level that introduces them."""
    groups = [(lv, [f.name for f in feats if f.level == lv]) for lv in X86_LEVELS]
    return ", ".join(f"{', '.join(names)} ({lv})" for lv, names in groups if names)


def _hide_text(unhideable: list[FeatureTruth]) -> str:
    return f"this host cannot hide {_by_level(unhideable)} from guests"


def _culprit_text(missing: list[FeatureTruth], unhideable: list[FeatureTruth]) -> str:
    parts = []
    if missing:
        parts.append(f"guests on this host do not see {_by_level(missing)}")
    if unhideable:
        parts.append(_hide_text(unhideable))
    return "; ".join(parts)


def admitted_levels(host: X86Host, policy: CompatPolicy, max_level: str = "") -> list[str]:
    """The x86-64 levels this host admits under `policy` (none above the agent's ceiling `max_level`)."""
    out = []
    for level in X86_LEVELS[: X86_LEVELS.index(max_level) + 1 if max_level else None]:
        missing, unhideable = level_culprits(host, level)
        if not missing and (policy == CompatPolicy.BEST_EFFORT or not unhideable):
            out.append(level)
    return out


def _offer(host: X86Host, max_level: str = "") -> str:
    strict = admitted_levels(host, CompatPolicy.STRICT, max_level)
    best = admitted_levels(host, CompatPolicy.BEST_EFFORT, max_level)
    own = f"the ceiling {max_level}" if max_level else "the host's own level"
    return f"STRICT: {', '.join(strict) or 'none'}; BEST_EFFORT: {', '.join(best) or 'none'}; or {own}"


def _x86_pv(request: PlatformRequest, host: X86Host, notes: list[str]) -> None:
    """Refuses pv interfaces the host lacks; checks the bare-metal look when no pv is asked."""
    offered = "none, KVM" + (", HYPERV" if host.hyperv else "")
    if Pv.HYPERV in request.pv and not host.hyperv:
        reason = "KVM on this host has no Hyper-V emulation (KVM_CAP_SYS_HYPERV_CPUID is 0)"
        raise PlatformRefused("pv", "HYPERV", reason, offered)
    if Pv.KVM in request.pv and not any(r[0] == 0x40000000 for r in host.supported):
        raise PlatformRefused("pv", "KVM", "KVM_GET_SUPPORTED_CPUID lists no KVM leaves (0x4000_0000)", offered)
    if request.pv:
        return
    tells = [
        text
        for text, hideable in (
            ("the hypervisor bit", host.hv_bit_hideable),
            ("KVM's 0x4000_0000 leaves", host.kvm_leaves_hideable),
        )
        if not hideable
    ]
    if not tells:
        return
    reason = f"this host cannot hide {' and '.join(tells)} from guests"
    if request.policy == CompatPolicy.STRICT:
        raise PlatformRefused("abi", "BARE_METAL without pv (STRICT)", reason, offered)
    notes.append(f"abi BARE_METAL (BEST_EFFORT): {reason}; the guest can tell it runs under KVM")
