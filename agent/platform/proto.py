"""Platform conversions at the gRPC edge: protobuf messages ↔ the frozen platform model. No grpc here.

Newer clients are refused clearly, never silently half-understood (issue 3 item 7): enum numbers this proto does not
define and fields this build does not know (e.g. the reserved 100-199 range) are InvalidArgument naming the field.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any, TypeVar

from google.protobuf.unknown_fields import UnknownFieldSet
from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.arch import ppc_host_arches
from kvmplat.agent.platform.ceiling import above_ceiling
from kvmplat.agent.platform.levels import PPC_LEVELS, X86_LEVELS, x86_level_number
from kvmplat.agent.platform.model import Abi, Accel, Arch, CompatPolicy, EffectivePlatform, PlatformRequest, Pv
from kvmplat.agent.platform.resolve import level_culprits, resolve
from kvmplat.agent.platform.x86host import X86Host
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["effective_to_proto", "fill_capabilities", "request_from_proto"]

FIELD = "spec.platform"
E = TypeVar("E", bound=enum.IntEnum)


def _enum(kind: type[E], value: int, field: str) -> E | None:
    """The model enum for a proto enum number: None for 0 (unspecified); InvalidArgument for unknown numbers."""
    if value == 0:
        return None
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(m.name for m in kind)
        raise InvalidArgument.field(field, f"unknown value {value} (this agent knows: {known})") from None


def _pb(member: enum.Enum) -> Any:
    """The proto enum value of a model enum member (same name, same number)."""
    return getattr(pb, member.name)


def _refuse_unknown_fields(msg: Any, field: str) -> None:
    """Fields this build does not know, from a newer client, are refused rather than ignored."""
    unknown = UnknownFieldSet(msg)
    numbers = sorted({unknown[i].field_number for i in range(len(unknown))})
    if numbers:
        listed = ", ".join(str(n) for n in numbers)
        raise InvalidArgument.field(field, f"unknown field number(s) {listed} (sent by a newer client?)")


def request_from_proto(spec_platform: pb.PlatformSpec) -> PlatformRequest:
    """The PlatformRequest of a PlatformSpec; InvalidArgument naming the field for anything this agent cannot read."""
    _refuse_unknown_fields(spec_platform, FIELD)
    pv = [_enum(Pv, v, f"{FIELD}.pv") for v in spec_platform.pv]
    if None in pv:
        raise InvalidArgument.field(f"{FIELD}.pv", "PV_UNSPECIFIED is not a paravirtual interface (KVM, HYPERV)")
    bits = spec_platform.bits  # 0: the arch's width (32 for PPC, else 64)
    if bits not in (0, 32, 64):
        raise InvalidArgument.field(f"{FIELD}.bits", f"{bits} is not a guest width (64, the default, or 32)")
    return PlatformRequest(
        abi=_enum(Abi, spec_platform.abi, f"{FIELD}.abi"),
        pv=frozenset(p for p in pv if p is not None),
        compat=spec_platform.compat.strip(),
        policy=_enum(CompatPolicy, spec_platform.compat_policy, f"{FIELD}.compat_policy") or CompatPolicy.STRICT,
        bits=bits,
        accel=_enum(Accel, spec_platform.accel, f"{FIELD}.accel") or Accel.AUTO,
        arch=_enum(Arch, spec_platform.arch, f"{FIELD}.arch"),
    )


def effective_to_proto(e: EffectivePlatform) -> pb.EffectivePlatform:
    """The EffectivePlatform message of `e` (enum values are equal by construction)."""
    return pb.EffectivePlatform(
        abi=_pb(e.abi),
        pv=[_pb(p) for p in e.pv],
        compat=e.compat,
        compat_raw=e.compat_raw,
        compat_policy=_pb(e.policy),
        bits=e.bits,
        accel=e.accel,
        cross_arch=e.cross_arch,
        notes=list(e.notes),
        visible_above_level=list(e.visible_above_level),
        arch=_pb(e.arch) if e.arch is not None else pb.ARCH_UNSPECIFIED,
    )


def fill_capabilities(caps: pb.Capabilities, host: Any, max_level: str = "") -> None:
    """Sets the platform part of `caps` (arches, abis, pv, levels, accels, cpu_features, hideability, ceiling) from
    host truth and the agent's ceiling `max_level`."""
    caps.max_level = max_level
    if isinstance(host, X86Host):
        _fill_x86(caps, host, max_level)
    else:
        _fill_by_resolution(caps, host, max_level)


def _fill_x86(caps: pb.Capabilities, host: X86Host, max_level: str) -> None:
    caps.arch = host.arch
    caps.arches[:] = [pb.X86_64]
    caps.abis[:] = [pb.BARE_METAL]
    caps.pv[:] = [pb.KVM] + ([pb.HYPERV] if host.hyperv else [])
    del caps.levels[:]
    for level in X86_LEVELS:
        missing, unhideable = level_culprits(host, level)
        above = above_ceiling(level, max_level)
        caps.levels.add(
            name=level,
            raw=x86_level_number(level),
            strict=not missing and not unhideable and not above,
            best_effort=not missing and not above,
            missing=[f.name for f in missing],
            unhideable=[f.name for f in unhideable],
            above_ceiling=bool(above),
            above_ceiling_features=above,
        )
    caps.accels[:] = [host.accel]
    caps.accel_default = host.accel
    del caps.cpu_features[:]
    for f in host.features:
        caps.cpu_features.add(name=f.name, level=f.level, claimed=f.claimed, seen=f.seen, hideable=f.hideable)
    caps.hv_bit_hideable = host.hv_bit_hideable
    caps.kvm_leaves_hideable = host.kvm_leaves_hideable
    caps.host_truth_source = host.source if host.source == "cache" else f"{host.source} ({host.probe_ms:.1f} ms)"


def _fill_by_resolution(caps: pb.Capabilities, host: Any, max_level: str) -> None:
    """A PowerPC host: arches, abis, pv and levels as resolution admits them (the PowerPC module owns the rules)."""
    ppc = importlib.import_module("kvmplat.agent.platform.ppc")
    if not isinstance(host, ppc.PpcHost):
        raise TypeError(f"no capabilities for host truth of type {type(host).__name__}")
    caps.arches[:] = [_pb(a) for a in ppc_host_arches(host)]
    abis = [a for a in (Abi.SPAPR, Abi.BOOKE, Abi.BARE_METAL) if _admits_any_arch(host, a, max_level)]
    caps.abis[:] = [_pb(a) for a in abis]
    caps.pv[:] = [_pb(p) for p in Pv if _admits(host, PlatformRequest(pv=frozenset({p})), max_level)]
    caps.accels[:] = list(host.accels)
    caps.accel_default = host.default_accel
    del caps.levels[:]
    for lv in PPC_LEVELS:
        strict = _admits(host, PlatformRequest(compat=lv.name), max_level)
        best = _admits(host, PlatformRequest(compat=lv.name, policy=CompatPolicy.BEST_EFFORT), max_level)
        over = _above_ppc_ceiling(lv.name, max_level)
        caps.levels.add(name=lv.name, raw=lv.logical_pvr, strict=strict, best_effort=best, above_ceiling=over)


def _above_ppc_ceiling(level: str, max_level: str) -> bool:
    order = [lv.name for lv in PPC_LEVELS]
    return bool(max_level) and order.index(level) > order.index(max_level)


def _admits_any_arch(host: Any, abi: Abi, max_level: str) -> bool:
    return any(_admits(host, PlatformRequest(abi=abi, arch=a), max_level) for a in ppc_host_arches(host))


def _admits(host: Any, request: PlatformRequest, max_level: str = "") -> bool:
    try:
        resolve(request, host, max_level)
    except (PlatformRefused, InvalidArgument):
        return False
    return True
