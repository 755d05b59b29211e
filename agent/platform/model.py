"""The platform model (DESIGN.md, "The platform model") as frozen values, free of protobuf and grpc.

A caller declares a `PlatformRequest`; resolution against the host's truth yields an `EffectivePlatform` (what the
guest will really see, with notes on anything degraded) or raises `PlatformRefused`/`InvalidArgument`. Enum values
equal the proto's, so conversion at the gRPC edge is by value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Abi", "Accel", "Arch", "CompatPolicy", "EffectivePlatform", "PlatformRequest", "Pv"]


class Abi(enum.IntEnum):
    """What the guest was built for."""

    BARE_METAL = 1
    SPAPR = 2
    BOOKE = 3


class Pv(enum.IntEnum):
    """Paravirtual interfaces layered on the abi ("KVM is a feature flag, not a platform")."""

    KVM = 1
    HYPERV = 2


class CompatPolicy(enum.IntEnum):
    """STRICT: refused unless honoured exactly; BEST_EFFORT: hide what can be hidden, name the rest."""

    STRICT = 1
    BEST_EFFORT = 2


class Accel(enum.IntEnum):
    """Accelerator flavour asked for; HV/PR force PowerPC book3s_hv/book3s_pr."""

    AUTO = 1
    HV = 2
    PR = 3


class Arch(enum.IntEnum):
    """The guest architecture (the seed's guest_arch): PPC is 32-bit PowerPC, PPC64 big-endian, PPC64LE little."""

    X86_64 = 1
    PPC64 = 2
    PPC64LE = 3
    PPC = 4


@dataclass(frozen=True)
class PlatformRequest:
    """A declared platform. `abi`/`arch` None mean the host's own; `compat` empty the host's level (or the agent's
    ceiling); `bits` 0 the arch's width (32 for PPC, else 64)."""

    abi: Abi | None = None
    pv: frozenset[Pv] = frozenset()
    compat: str = ""
    policy: CompatPolicy = CompatPolicy.STRICT
    bits: int = 0
    accel: Accel = Accel.AUTO
    arch: Arch | None = None


@dataclass(frozen=True)
class EffectivePlatform:
    """What the guest gets. `accel` names the accelerator in use (kvm-intel, kvm-amd, kvm_pvm, hv, pr); `arch` is
    always set by resolution (None only in values built by hand)."""

    abi: Abi
    pv: tuple[Pv, ...]
    compat: str
    compat_raw: int
    policy: CompatPolicy
    bits: int
    accel: str
    cross_arch: bool = False
    notes: tuple[str, ...] = ()
    visible_above_level: tuple[str, ...] = ()
    arch: Arch | None = None
