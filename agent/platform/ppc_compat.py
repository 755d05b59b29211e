"""PowerPC compat resolution: which PVR or level a guest will see under the chosen flavour (hv, pr, booke).

HV sets a level with KVM_REG_PPC_ARCH_COMPAT (up to the host's level; the kernel refuses higher values with EINVAL)
but refuses any sregs PVR other than the host's. PR emulates any Book3S PVR through kvm_sregs.pvr but has no
ARCH_COMPAT register (EINVAL): a STRICT level is refused under PR, even the host's own (the guest would run the
raw PVR, not the architected mode), and BEST_EFFORT runs the host's PVR with the newer instructions visible.
BookE accepts only the host's PVR. (reference/PPC_ON_TCG.md A and D; book3s_hv.c kvmppc_set_arch_compat,
set_sregs_hv; the real kernels agree in the PowerPC lab, issue 8.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.model import CompatPolicy, PlatformRequest
from kvmplat.agent.platform.ppc_levels import BOOK3S32_DEFAULT_PVR, LEVELS, Level, family_of, level_by_name

if TYPE_CHECKING:
    from kvmplat.agent.platform.ppc import PpcHost

__all__ = ["GuestCompat", "is_logical_pvr", "resolve_compat"]


@dataclass(frozen=True)
class GuestCompat:
    """The compat a guest gets: canonical name, raw value (logical or real PVR) and what to tell the user."""

    name: str
    raw: int
    notes: tuple[str, ...] = ()
    visible_above: tuple[str, ...] = ()


def is_logical_pvr(value: int) -> bool:
    """True for PAPR logical PVRs (0x0f......), the values of KVM_REG_PPC_ARCH_COMPAT."""
    return value >> 24 == 0x0F


def resolve_compat(asked: Level | int | None, request: PlatformRequest, accel: str, host: PpcHost) -> GuestCompat:
    """The compat `accel` gives for `asked` on `host`, or PlatformRefused/InvalidArgument."""
    if asked is None:
        return _host_default(request.bits, host)
    if isinstance(asked, Level):
        return _level(asked, request, accel, host)
    return _raw_pvr(asked, request, accel, host)


def _host_default(bits: int, host: PpcHost) -> GuestCompat:
    fam = family_of(host.pvr)
    if bits == 32 and host.kind == "book3s":
        note = f"bits 32 without a PVR: the guest gets PVR 0x{BOOK3S32_DEFAULT_PVR:08x} (PowerPC 7400, mac99's core)"
        return GuestCompat("ppc7400", BOOK3S32_DEFAULT_PVR, (note,))
    if bits == 64 and fam is not None and fam.bits == 32:
        raise PlatformRefused("bits", "64", f"this host's core {fam.name} is 32-bit", "32")
    return GuestCompat(host.level or (fam.name if fam else f"0x{host.pvr:08x}"), host.pvr)


def _level(level: Level, request: PlatformRequest, accel: str, host: PpcHost) -> GuestCompat:
    asked = f"{level.name} ({request.policy.name})"
    if request.bits == 32:
        raise InvalidArgument.field(
            "platform.compat",
            f"{level.name} is a 64-bit Book3S level; a 32-bit guest needs a 32-bit PVR "
            f"such as 0x{BOOK3S32_DEFAULT_PVR:08x}",
        )
    if host.kind == "booke":
        raise PlatformRefused("compat", asked, "levels are Book3S server levels; a BookE guest runs the host's core")
    top = level_by_name(host.level) if host.level else None
    if top is None:
        raise PlatformRefused("compat", asked, f"this host's PVR 0x{host.pvr:08x} has no ISA level", "no levels")
    offered = _levels_upto(top, accel, host)
    if level.rank > top.rank:
        reason = f"above this host's level {top.name}: a guest cannot see more than the processor has"
        raise PlatformRefused("compat", asked, reason, offered)
    if accel == "hv":
        note = f"compat {level.name}: KVM_REG_PPC_ARCH_COMPAT = 0x{level.logical_pvr:08x} (PCR set by book3s_hv)"
        return GuestCompat(level.name, level.logical_pvr, notes=(note,))
    return _pr_level(level, top, request.policy, offered, host)


def _pr_level(level: Level, top: Level, policy: CompatPolicy, offered: str, host: PpcHost) -> GuestCompat:
    """PR has no ARCH_COMPAT: STRICT is refused at every level (even the host's own, issue 8: the guest would run
    the raw PVR, not the architected mode a level names), BEST_EFFORT runs the host's PVR and says so."""
    reason = (
        f"book3s_pr cannot set KVM_REG_PPC_ARCH_COMPAT (the kernel answers EINVAL): the guest would see "
        f"the host's {top.name} PVR 0x{host.pvr:08x}, not the architected {level.name} mode"
    )
    if policy is CompatPolicy.STRICT:
        raise PlatformRefused("compat", f"{level.name} (STRICT)", reason, offered)
    above = tuple(lv.name for lv in LEVELS if level.rank < lv.rank <= top.rank)
    visible = f"; visible above {level.name}: {', '.join(above)}" if above else ""
    note = f"compat {level.name} (BEST_EFFORT) not applied: {reason}{visible}"
    return GuestCompat(top.name, host.pvr, notes=(note,), visible_above=above)


def _levels_upto(top: Level, accel: str, host: PpcHost) -> str:
    if accel == "hv" or "hv" in host.accels:
        names = [lv.name for lv in LEVELS if lv.rank <= top.rank]
        where = "" if accel == "hv" else " under accel HV"
        return f"{names[0]}..{names[-1]}{where}"
    return f"no level under STRICT (book3s_pr has no ARCH_COMPAT); BEST_EFFORT runs the host's {top.name} PVR"


def _raw_pvr(pvr: int, request: PlatformRequest, accel: str, host: PpcHost) -> GuestCompat:
    asked = f"0x{pvr:08x}"
    if is_logical_pvr(pvr):
        known = ", ".join(f"0x{lv.logical_pvr:08x}" for lv in LEVELS)
        raise PlatformRefused("compat", asked, f"not a logical PVR KVM accepts (known: {known})")
    fam = family_of(pvr)
    if pvr == host.pvr:
        return GuestCompat(host.level or (fam.name if fam else asked), pvr)
    if accel != "pr":
        raise PlatformRefused(
            "compat", asked, f"{accel} accepts only the host's own PVR in kvm_sregs", f"0x{host.pvr:08x}"
        )
    if fam is None:
        if request.policy is CompatPolicy.STRICT:
            raise PlatformRefused("compat", f"{asked} (STRICT)", "kvmplat does not know this PVR's core family")
        return GuestCompat(asked, pvr, (f"PVR {asked}: unknown core family, book3s_pr emulates what it can",))
    if fam.kind != "book3s":
        raise PlatformRefused("compat", asked, f"{fam.name} is a BookE core; book3s_pr emulates Book3S cores only")
    if fam.bits != request.bits:
        raise InvalidArgument.field(
            "platform.bits", f"{request.bits} does not match PVR {asked} ({fam.name}, {fam.bits}-bit)"
        )
    note = f"PVR {asked} ({fam.name}) set through kvm_sregs.pvr; book3s_pr emulates it"
    return GuestCompat(fam.level or fam.name, pvr, (note,))
