"""Learning a PowerPC host from its kernel: which VM types can be created, the capabilities on /dev/kvm and on each
flavour's VM fd, the host PVR (kvm_sregs.pvr of a fresh vCPU) and KVM_PPC_GET_PVINFO's words. Nothing is assumed:
a flavour is offered only if KVM_CREATE_VM of its type succeeded here, and type 0's flavour is read back with QEMU's
test (GET_PVINFO on the VM fd is non-zero only under PR).
"""

from __future__ import annotations

import platform
import re
import struct
from pathlib import Path
from typing import Any

from kvmplat.agent.platform.ppc import CAP_PPC_GET_PVINFO, PROBED_CAPS, PpcHost
from kvmplat.agent.platform.ppc_levels import BOOK3S32_DEFAULT_PVR
from kvmplat.lab.ppc.apply import KvmFds, PpcFds, StepResult, apply_ppc
from kvmplat.lab.ppc.plan import Expect, check_extension, create_vcpu, create_vm, get_pvinfo, get_sregs, set_sregs

__all__ = ["cpuinfo_pvr", "learn_ppc_host"]

CAP_BOOKE_SREGS = 62
_ANY = Expect("any")


def cpuinfo_pvr(text: str) -> int:
    """The PVR in /proc/cpuinfo's "revision : 2.2 (pvr 004e 1202)" line, or 0."""
    m = re.search(r"\(pvr ([0-9a-f]{4}) ([0-9a-f]{4})\)", text)
    return int(m.group(1) + m.group(2), 16) if m else 0


def learn_ppc_host(kvm: Any, name: str = "", source: str = "", cpuinfo: str | None = None) -> PpcHost:
    """The PpcHost of a real /dev/kvm (a kvm.Kvm) or of any fd layer (PpcFds), learnt by asking the kernel.

    The PVR comes from a vCPU's sregs; only when no VM can be created, from `cpuinfo` (default /proc/cpuinfo)."""
    fds: PpcFds = kvm if hasattr(kvm, "call") else KvmFds(kvm)
    sys_steps = [check_extension("kvm", cap, _ANY, "learn") for cap in PROBED_CAPS]
    caps = {r.step.value or 0: r.ret or 0 for r in apply_ppc(sys_steps, fds) if r.ret is not None}
    kind = "booke" if caps.get(CAP_BOOKE_SREGS) else "book3s"
    forced = (("booke", 0),) if kind == "booke" else (("hv", 1), ("pr", 2))
    vm_caps: dict[str, dict[int, int]] = {}
    pvr = 0
    pvinfo: tuple[int, tuple[int, ...]] = (0, ())
    book3s32: bool | None = None
    for accel, vm_type in forced:
        learnt = _learn_vm(fds, vm_type)
        if learnt is None:
            continue
        vm_caps[accel], vm_pvr, vm_pvinfo = learnt
        if accel == "pr":
            book3s32 = _learn_book3s32(fds)
        pvr = pvr or vm_pvr
        pvinfo = vm_pvinfo if vm_pvinfo[1] else pvinfo
    if not pvr:
        pvr = cpuinfo_pvr(cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo"))
    return PpcHost(
        name=name,
        pvr=pvr,
        kind=kind,
        accels=tuple(vm_caps),
        default_accel=_default_flavour(fds, kind),
        caps=caps,
        vm_caps=vm_caps,
        pvinfo_flags=pvinfo[0],
        pvinfo_hcall=pvinfo[1],
        source=source,
        arch=platform.machine() if platform.machine().startswith("ppc") else "",
        book3s32=book3s32,
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _learn_vm(fds: PpcFds, vm_type: int) -> tuple[dict[int, int], int, tuple[int, tuple[int, ...]]] | None:
    """Caps on a VM fd of `vm_type`, its vCPU's PVR and PVINFO; None when the type cannot be created."""
    try:
        made = apply_ppc([create_vm(vm_type)], fds)
        if not made[0].ok:
            return None
        steps = [check_extension("vm", cap, _ANY, "learn") for cap in PROBED_CAPS]
        vm_caps = {r.step.value or 0: r.ret or 0 for r in apply_ppc(steps, fds) if r.ret is not None}
        pvinfo: tuple[int, tuple[int, ...]] = (0, ())
        if vm_caps.get(CAP_PPC_GET_PVINFO):
            pvinfo = _pvinfo(apply_ppc([get_pvinfo("learn")], fds)[0])
        sregs = apply_ppc([create_vcpu(0), get_sregs("vcpu0", Expect("zero"), "host PVR")], fds)
        pvr = struct.unpack("<I", sregs[-1].out[:4])[0] if len(sregs) == 2 and sregs[-1].ok else 0
        return vm_caps, pvr, pvinfo
    finally:
        fds.release()


def _learn_book3s32(fds: PpcFds) -> bool:
    """Whether book3s_pr takes a 32-bit Book3S PVR (mac99's 7400): KVM_SET_SREGS and read back."""
    pvr32 = BOOK3S32_DEFAULT_PVR
    steps = [
        create_vm(2),
        create_vcpu(0),
        get_sregs("vcpu0", Expect("zero"), "sregs to edit"),
        set_sregs("vcpu0", ((0, struct.pack("<I", pvr32)),), "learn: a 32-bit Book3S PVR"),
        get_sregs("vcpu0", Expect("out", pvr32, 0, 4), "learn: read back"),
    ]
    try:
        results = apply_ppc(steps, fds)
    finally:
        fds.release()
    return len(results) == len(steps) and all(r.ok for r in results)


def _pvinfo(result: StepResult) -> tuple[int, tuple[int, ...]]:
    if not result.ok:
        return 0, ()
    flags, *hcall = struct.unpack("<5I", result.out[:20])
    return flags, tuple(hcall)


def _default_flavour(fds: PpcFds, kind: str) -> str:
    """The flavour KVM_CREATE_VM(0) gives: "" if it fails, else PR when GET_PVINFO shows on the VM fd."""
    try:
        made = apply_ppc([create_vm(0), check_extension("vm", CAP_PPC_GET_PVINFO, _ANY, "flavour")], fds)
    finally:
        fds.release()
    if not made[0].ok:
        return ""
    if kind == "booke":
        return "booke"
    return "pr" if len(made) == 2 and made[1].ret else "hv"
