"""PowerPC hosts and platform resolution: what a ppc64 host's KVM offers (`PpcHost`) and the pure `resolve_ppc`.

    PpcHost       measured on the host (ppc_learn.learn_ppc_host) or loaded from JSON (PpcHost.from_file)
    resolve_ppc   PlatformRequest × PpcHost → EffectivePlatform, or PlatformRefused / InvalidArgument

The mapping (KVM_ABI.md §0, §2): accel is the KVM_CREATE_VM type (book3s_hv or book3s_pr); SPAPR is
KVM_CAP_PPC_PAPR per vCPU; a level is KVM_REG_PPC_ARCH_COMPAT (HV only); a raw PVR is kvm_sregs.pvr (PR emulates
it, HV and BookE only accept the host's own); pv KVM is the hypercall sequence of KVM_PPC_GET_PVINFO (PR and BookE).
The predictions follow what real kernels did in reference/PPC_ON_TCG.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.arch import (
    check_abi_arch,
    check_ppc_arch,
    default_abi_ppc,
    is_cross_arch,
    settle_ppc,
)
from kvmplat.agent.platform.ceiling import ceiling_ppc
from kvmplat.agent.platform.model import Abi, Accel, Arch, EffectivePlatform, PlatformRequest, Pv
from kvmplat.agent.platform.ppc_compat import resolve_compat
from kvmplat.agent.platform.ppc_levels import family_of, parse_ppc_compat

__all__ = ["CAP_PPC_GET_PVINFO", "PROBED_CAPS", "PpcHost", "resolve_ppc"]

CAP_PPC_GET_PVINFO = 57
# The capabilities learnt on every host, sys fd and VM fd: GET_PVINFO, BOOKE_SREGS, SMT, PAPR, ONE_REG,
# CHECK_EXTENSION_VM, MMU_RADIX, MMU_HASH_V3, NESTED_HV.
PROBED_CAPS = (57, 62, 64, 68, 70, 105, 134, 135, 160)
_ACCEL_NAMES = {Accel.HV: "hv", Accel.PR: "pr"}
_FLAVOUR = {
    "hv": "book3s_hv: the guest runs natively in a hardware partition",
    "pr": "book3s_pr: the guest runs in problem state with privileged instructions emulated, expect it to be slower",
    "booke": "BookE KVM: the guest runs on the host's own embedded core",
}


@dataclass(frozen=True)
class PpcHost:
    """What a PowerPC host's KVM offers, as learnt from the kernel: every field is a measured answer."""

    name: str
    pvr: int
    kind: str  # "book3s" or "booke", from the PVR family
    accels: tuple[str, ...]  # flavours whose forced KVM_CREATE_VM worked ("hv" type 1, "pr" type 2; "booke")
    default_accel: str  # the flavour KVM_CREATE_VM(0) gave, "" when it failed
    caps: dict[int, int] = field(default_factory=dict)  # KVM_CHECK_EXTENSION on /dev/kvm
    vm_caps: dict[str, dict[int, int]] = field(default_factory=dict)  # the same on a VM fd, per flavour
    pvinfo_flags: int = 0
    pvinfo_hcall: tuple[int, ...] = ()  # KVM_PPC_GET_PVINFO's four instruction words; () when not offered
    source: str = ""
    arch: str = ""  # uname -m of the host ("ppc64le"); "" derives it from kind and PVR (arch.ppc_host_arch)
    book3s32: bool | None = None  # book3s_pr took (and read back) a 32-bit Book3S PVR; None: not measured

    @property
    def level(self) -> str:
        """The host's ISA level name ("power9"), or "" when its PVR family has none."""
        fam = family_of(self.pvr)
        return fam.level if fam else ""

    def vm_cap(self, accel: str, cap: int) -> int:
        """A capability on a VM fd of flavour `accel` (0 when not measured)."""
        return self.vm_caps.get(accel, {}).get(cap, 0)

    def to_json(self) -> dict[str, Any]:
        """The host as JSON data (hex strings for PVR and instruction words, caps keyed by number)."""
        return {
            "name": self.name,
            "source": self.source,
            **({"arch": self.arch} if self.arch else {}),
            **({"book3s32": self.book3s32} if self.book3s32 is not None else {}),
            "pvr": f"0x{self.pvr:08x}",
            "kind": self.kind,
            "accels": list(self.accels),
            "default_accel": self.default_accel,
            "caps": {str(k): v for k, v in sorted(self.caps.items())},
            "vm_caps": {a: {str(k): v for k, v in sorted(c.items())} for a, c in sorted(self.vm_caps.items())},
            "pvinfo": {"flags": self.pvinfo_flags, "hcall": [f"{w:08x}" for w in self.pvinfo_hcall]}
            if self.pvinfo_hcall
            else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PpcHost:
        """The host from `to_json` data."""
        pvinfo = data.get("pvinfo") or {}
        return cls(
            name=str(data["name"]),
            source=str(data.get("source", "")),
            arch=str(data.get("arch", "")),
            book3s32=None if data.get("book3s32") is None else bool(data["book3s32"]),
            pvr=int(str(data["pvr"]), 16),
            kind=str(data["kind"]),
            accels=tuple(data["accels"]),
            default_accel=str(data.get("default_accel", "")),
            caps={int(k): int(v) for k, v in data.get("caps", {}).items()},
            vm_caps={a: {int(k): int(v) for k, v in c.items()} for a, c in data.get("vm_caps", {}).items()},
            pvinfo_flags=int(pvinfo.get("flags", 0)),
            pvinfo_hcall=tuple(int(w, 16) for w in pvinfo.get("hcall", [])),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> PpcHost:
        """A host from a JSON data file (tests/golden/ppc/hosts/*.json)."""
        return cls.from_json(json.loads(Path(path).read_text()))


def resolve_ppc(request: PlatformRequest, host: PpcHost, max_level: str = "") -> EffectivePlatform:
    """What a guest of `request` gets on `host` (under the agent's ceiling `max_level`, a POWER level); refusals as
    PlatformRefused/InvalidArgument."""
    if request.bits not in (0, 32, 64):
        raise InvalidArgument.field("platform.bits", f"{request.bits} is not 32 or 64")
    request = settle_ppc(request, host)
    arch = request.arch
    assert arch is not None  # settled
    abi = request.abi or default_abi_ppc(arch, host)
    _check_abi(abi, host)
    check_abi_arch(abi, arch, powerpc=True)
    check_ppc_arch(arch, host)
    request = ceiling_ppc(request, max_level, abi)
    asked = parse_ppc_compat(request.compat)
    accel = _choose_accel(request, abi, asked, host)
    compat = resolve_compat(asked, request, accel, host)
    pv, pv_notes = _resolve_pv(request.pv, accel, host)
    return EffectivePlatform(
        abi=abi,
        pv=pv,
        compat=compat.name,
        compat_raw=compat.raw,
        policy=request.policy,
        bits=request.bits,
        accel=accel,
        cross_arch=is_cross_arch(arch, host),
        notes=(f"accel {accel}: {_FLAVOUR[accel]}", *_arch_notes(arch, host), *compat.notes, *pv_notes),
        visible_above_level=compat.visible_above,
        arch=arch,
    )


def _arch_notes(arch: Arch, host: PpcHost) -> tuple[str, ...]:
    if is_cross_arch(arch, host):
        return ("arch PPC: book3s_pr emulates a 32-bit Book3S processor (segment registers, BATs) on this ppc64 host",)
    return ()


def _check_abi(abi: Abi, host: PpcHost) -> None:
    """BookE guests need a BookE host; Book3S hosts run SPAPR and bare-metal Book3S guests."""
    if host.kind == "booke" and abi is not Abi.BOOKE:
        raise PlatformRefused("abi", abi.name, "a BookE host's KVM runs only BookE guests", "BOOKE")
    if host.kind == "book3s" and abi is Abi.BOOKE:
        raise PlatformRefused(
            "abi",
            "BOOKE",
            f"BookE guests need an embedded BookE host; this host is Book3S {host.level or 'ppc64'}",
            "SPAPR, BARE_METAL" if "pr" in host.accels else "SPAPR",
        )


def _needs_pr(request: PlatformRequest, abi: Abi, asked: Any, host: PpcHost) -> str:
    """Why only book3s_pr can run this guest ("" when HV can): names the field and the reason."""
    bits = request.bits
    if abi is Abi.BARE_METAL:
        return "abi|book3s_hv runs only sPAPR (PAPR) guests; a bare-metal Book3S guest needs book3s_pr"
    if bits == 32:
        return "bits|book3s_hv runs only 64-bit guests; a 32-bit Book3S guest needs book3s_pr"
    if isinstance(asked, int) and asked != host.pvr:
        return (
            f"compat|book3s_hv cannot change the PVR a guest reads (only the host's 0x{host.pvr:08x}); "
            "use a level (ARCH_COMPAT) or book3s_pr"
        )
    if Pv.KVM in request.pv and not host.vm_cap("hv", CAP_PPC_GET_PVINFO):
        return "pv|book3s_hv offers no KVM paravirt hypercalls (KVM_CAP_PPC_GET_PVINFO is 0 on its VM fd)"
    return ""


def _choose_accel(request: PlatformRequest, abi: Abi, asked: Any, host: PpcHost) -> str:
    """The flavour that will run the guest: forced by `accel`, else the kernel's default unless only PR can."""
    if host.kind == "booke":
        if request.accel is not Accel.AUTO:
            raise PlatformRefused("accel", request.accel.name, "book3s_hv/book3s_pr do not exist on a BookE host")
        if "booke" not in host.accels:
            raise PlatformRefused("accel", "AUTO", "KVM_CREATE_VM failed on this host", "nothing")
        return "booke"
    offered = ", ".join(a.upper() for a in host.accels) or "nothing (KVM_CREATE_VM failed for every type)"
    why_pr = _needs_pr(request, abi, asked, host)
    if request.accel is not Accel.AUTO:
        want = _ACCEL_NAMES[request.accel]
        if want not in host.accels:
            kind = "KVM_VM_PPC_HV (type 1)" if want == "hv" else "KVM_VM_PPC_PR (type 2)"
            raise PlatformRefused("accel", request.accel.name, f"KVM_CREATE_VM({kind}) fails on this host", offered)
        if want == "hv" and why_pr:
            fld, reason = why_pr.split("|", 1)
            raise PlatformRefused("accel", f"HV with {fld} {_asked_text(fld, abi, request)}", reason, offered)
        return want
    if why_pr:
        fld, reason = why_pr.split("|", 1)
        if "pr" not in host.accels:
            raise PlatformRefused(fld, _asked_text(fld, abi, request), reason + "; book3s_pr is absent here", offered)
        return "pr"
    if host.default_accel:
        return host.default_accel
    raise PlatformRefused("accel", "AUTO", "KVM_CREATE_VM fails for every VM type on this host", offered)


def _asked_text(fld: str, abi: Abi, request: PlatformRequest) -> str:
    return {"abi": abi.name, "bits": str(request.bits), "pv": "KVM"}.get(fld, request.compat)


def _resolve_pv(pv: frozenset[Pv], accel: str, host: PpcHost) -> tuple[tuple[Pv, ...], tuple[str, ...]]:
    """pv KVM needs KVM_PPC_GET_PVINFO on the chosen flavour; HYPERV is x86-only."""
    if Pv.HYPERV in pv:
        raise PlatformRefused("pv", "HYPERV", "Hyper-V enlightenments exist only on x86 hosts", _pv_offer(accel, host))
    if Pv.KVM not in pv:
        return (), ()
    if not host.vm_cap(accel, CAP_PPC_GET_PVINFO) or not host.pvinfo_hcall:
        raise PlatformRefused(
            "pv",
            "KVM",
            f"{accel} offers no KVM paravirt hypercalls (KVM_CAP_PPC_GET_PVINFO is 0 on its VM fd)",
            _pv_offer(accel, host),
        )
    words = " ".join(f"{w:08x}" for w in host.pvinfo_hcall)
    idle = ", ePAPR idle hcall" if host.pvinfo_flags & 1 else ""
    return (Pv.KVM,), (f"pv KVM: hypercall sequence {words} (KVM_PPC_GET_PVINFO flags {host.pvinfo_flags:#x}{idle})",)


def _pv_offer(accel: str, host: PpcHost) -> str:
    if host.vm_cap(accel, CAP_PPC_GET_PVINFO) and host.pvinfo_hcall:
        return "KVM"
    return "KVM under accel PR" if host.vm_cap("pr", CAP_PPC_GET_PVINFO) else "no pv interface"
