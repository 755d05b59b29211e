"""The guest architecture (DESIGN.md "arch", the seed's guest_arch): which arches a host's KVM runs, the width an
arch implies, which abis each arch has, and when running it is cross-architecture. Pure.

Rules (issue 13 item 1):
- arch unset = the host's own: X86_64 on x86; on a Book3S ppc64 host PPC64LE, or PPC when bits 32 is asked (the
  only 32-bit guest such a host has); on a BookE host PPC64 for a 64-bit core (e5500, e6500) unless bits 32, else PPC.
- bits 0 = the arch's width: 32 for PPC, else 64. X86_64 with bits 32 is an i686 guest (long mode hidden); a PowerPC
  arch and a width that contradict each other (PPC with 64, PPC64/PPC64LE with 32) are refused naming bits.
- An x86 host runs X86_64 only: every PowerPC arch is refused naming both (kvmplat does not emulate another
  architecture); a PowerPC host refuses X86_64 the same way.
- A Book3S ppc64 host runs PPC64 and PPC64LE as itself (endianness is the guest's MSR[LE], not a host mode) and PPC
  (32-bit Book3S: segment registers and BATs) only under book3s_pr, which emulates that MMU: the one case where a
  host really runs another arch, so the one where `cross_arch` is true. A 64-bit BookE core runs 32-bit guests in
  its own 32-bit computation mode (EPCR[ICM]): not cross-arch. A 32-bit BookE host runs PPC only.
- abi × arch: SPAPR guests are 64-bit (PPC64, PPC64LE); BookE has no little-endian 64-bit guests; BARE_METAL is any
  PowerPC arch on PowerPC and X86_64 on x86. Unset abi with arch PPC on a Book3S host is BARE_METAL (sPAPR has no
  32-bit guests), otherwise the host's native abi.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kvmplat.agent.errors import PlatformRefused
from kvmplat.agent.platform.model import Abi, Arch, PlatformRequest

__all__ = [
    "ARCH_BY_MACHINE",
    "POWERPC",
    "abi_arches",
    "arch_width",
    "check_abi_arch",
    "check_ppc_arch",
    "default_abi_ppc",
    "is_cross_arch",
    "ppc_host_arch",
    "ppc_host_arches",
    "settle_ppc",
    "settle_x86",
]

POWERPC = (Arch.PPC64, Arch.PPC64LE, Arch.PPC)
# uname -m / platform.machine() → the arch a host is.
ARCH_BY_MACHINE = {"x86_64": Arch.X86_64, "ppc64le": Arch.PPC64LE, "ppc64": Arch.PPC64, "ppc": Arch.PPC}
_SPELLING = {Arch.X86_64: "x86_64", Arch.PPC64: "ppc64", Arch.PPC64LE: "ppc64le", Arch.PPC: "ppc (32-bit PowerPC)"}


def arch_width(arch: Arch) -> int:
    """The register width an arch implies: 32 for PPC, 64 otherwise."""
    return 32 if arch is Arch.PPC else 64


def abi_arches(abi: Abi, powerpc: bool) -> tuple[Arch, ...]:
    """The guest arches an abi has on a PowerPC (or x86) host."""
    if not powerpc:
        return (Arch.X86_64,) if abi is Abi.BARE_METAL else ()
    return {Abi.SPAPR: (Arch.PPC64, Arch.PPC64LE), Abi.BOOKE: (Arch.PPC, Arch.PPC64)}.get(abi, POWERPC)


def settle_x86(request: PlatformRequest, host_arch: str) -> PlatformRequest:
    """`request` with arch and bits filled in for an x86 host; PlatformRefused for a PowerPC arch."""
    arch = request.arch or Arch.X86_64
    if arch is not Arch.X86_64:
        raise PlatformRefused(
            "arch",
            arch.name,
            f"this host is {host_arch} and its KVM runs only x86 guests; a {_SPELLING[arch]} guest needs a PowerPC "
            "host (kvmplat does not emulate another architecture)",
            "X86_64",
        )
    return dataclasses.replace(request, arch=arch, bits=request.bits or 64)


def ppc_host_arch(host: Any) -> Arch:
    """The arch a PowerPC host is: its learnt `arch`, else PPC64LE for Book3S, PPC64/PPC for a 64/32-bit BookE core."""
    if getattr(host, "arch", "") in ARCH_BY_MACHINE:
        return ARCH_BY_MACHINE[host.arch]
    if host.kind == "booke":
        from kvmplat.agent.platform.ppc_levels import family_of

        fam = family_of(host.pvr)
        return Arch.PPC64 if fam is not None and fam.bits == 64 else Arch.PPC
    return Arch.PPC64LE


def ppc_host_arches(host: Any) -> tuple[Arch, ...]:
    """The guest arches a PowerPC host's KVM can run (PPC on Book3S only with book3s_pr)."""
    own = ppc_host_arch(host)
    if own is Arch.PPC:
        return (Arch.PPC,)
    if host.kind == "booke":
        return (Arch.PPC64, Arch.PPC)
    runs32 = "pr" in host.accels and host.book3s32 is not False  # learnt; unmeasured fixtures follow KVM_ABI.md
    return (Arch.PPC64, Arch.PPC64LE, *((Arch.PPC,) if runs32 else ()))


def _ppc_offer(host: Any) -> str:
    return ", ".join(a.name for a in ppc_host_arches(host))


def settle_ppc(request: PlatformRequest, host: Any) -> PlatformRequest:
    """`request` with arch and bits filled in for a PowerPC host; PlatformRefused for what the host cannot be."""
    own = ppc_host_arch(host)
    arch = request.arch
    if arch is Arch.X86_64:
        reason = (
            f"this host is {own.name.lower()} and its KVM runs only PowerPC guests; an x86_64 guest needs an x86 host"
        )
        raise PlatformRefused("arch", "X86_64", reason, _ppc_offer(host))
    if arch is None:
        arch = Arch.PPC if request.bits == 32 or own is Arch.PPC else own
    bits = request.bits or arch_width(arch)
    if bits in (32, 64) and bits != arch_width(arch):
        reason = f"arch {arch.name} guests are {arch_width(arch)}-bit"
        raise PlatformRefused("bits", str(bits), reason, str(arch_width(arch)))
    if own is Arch.PPC and arch is not Arch.PPC:
        raise PlatformRefused("arch", arch.name, "this host's core is 32-bit; it runs 32-bit guests only", "PPC")
    return dataclasses.replace(request, arch=arch, bits=bits)


def check_ppc_arch(arch: Arch, host: Any) -> None:
    """Refuses an arch the host's KVM does not run (after the abi checks, which name a BookE/Book3S mismatch)."""
    if arch not in ppc_host_arches(host):
        raise PlatformRefused("arch", arch.name, _why_not(arch, host), _ppc_offer(host))


def _why_not(arch: Arch, host: Any) -> str:
    if arch is Arch.PPC64LE:
        return "there is no little-endian BookE guest"
    if "pr" not in host.accels:
        return (
            "a 32-bit Book3S guest needs book3s_pr (book3s_hv runs only 64-bit sPAPR guests); book3s_pr is absent here"
        )
    return (
        "book3s_pr on this host did not take a 32-bit Book3S PVR when the agent learnt it (KVM_SET_SREGS of "
        "0x000c0209 was refused or did not read back)"
    )


def default_abi_ppc(arch: Arch, host: Any) -> Abi:
    """The abi an unset abi means on a PowerPC host for a settled arch."""
    if host.kind == "booke":
        return Abi.BOOKE
    return Abi.BARE_METAL if arch is Arch.PPC else Abi.SPAPR


def check_abi_arch(abi: Abi, arch: Arch, powerpc: bool) -> None:
    """Refuses an abi the arch does not have (SPAPR is 64-bit, BookE has no little-endian guests)."""
    allowed = abi_arches(abi, powerpc)
    if arch in allowed:
        return
    why = {
        Abi.SPAPR: "sPAPR (PAPR) guests are 64-bit (ppc64 or ppc64le)",
        Abi.BOOKE: "BookE guests are ppc (e500) or big-endian ppc64 (e5500, e6500); there is no little-endian BookE",
    }.get(abi, f"abi {abi.name} has no {arch.name} guests")
    raise PlatformRefused("arch", f"{arch.name} with abi {abi.name}", why, ", ".join(a.name for a in allowed))


def is_cross_arch(arch: Arch, host: Any) -> bool:
    """True only where the host really runs another arch: a 32-bit Book3S guest under book3s_pr on ppc64."""
    return arch is Arch.PPC and host.kind == "book3s" and ppc_host_arch(host) is not Arch.PPC
