"""The PowerPC ioctl plan: an EffectivePlatform as the exact ioctls that apply it, in order, as data.

A `Step` names the fd (kvm, vm, vcpuN), the ioctl, its powerpc request number (ioctls.PPC64), the argument (a value,
or the bytes of the struct the kernel reads) and the result expected. Plans are pure and byte-exact, so tests check
them without a PowerPC kernel and the lab (issue 8) runs the same plan on one (apply.apply_ppc).

Bytes are little-endian: kvmplat's PowerPC hosts are ppc64le (Debian ppc64el), where kernel structs are
little-endian. A big-endian ppc64 host would need ">" here; kvmplat does not target one.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from kvmplat.agent.errors import PlatformRefused
from kvmplat.agent.kvm._kvmc import ffi
from kvmplat.agent.kvm.ioctls import PPC64, Cap
from kvmplat.agent.platform.model import Abi, Accel, EffectivePlatform, PlatformRequest, Pv
from kvmplat.agent.platform.ppc import PpcHost
from kvmplat.agent.platform.ppc_compat import is_logical_pvr
from kvmplat.agent.platform.ppc_levels import Level, family_of, parse_ppc_compat

__all__ = [
    "KVM_REG_PPC_ARCH_COMPAT",
    "SREGS_E_64",
    "Expect",
    "Step",
    "plan_ppc",
    "plan_refusal_probe",
    "ppc_vm_type",
]

KVM_REG_PPC_ARCH_COMPAT = 0x10200000000000B7  # KVM_REG_PPC | KVM_REG_SIZE_U32 | 0xb7
VM_TYPES = {"hv": 1, "pr": 2, "booke": 0}  # KVM_VM_PPC_HV, KVM_VM_PPC_PR; BookE has one flavour
SREGS_E_64 = 1 << 2  # KVM_SREGS_E_64: EPCR and the 64-bit halves are valid
EPCR_ICM = 0x02000000  # interrupts taken in 64-bit mode
SREGS_SIZE = ffi.sizeof("struct ppc_kvm_sregs")
_E = ffi.offsetof("struct ppc_kvm_sregs", "u")  # u.e starts the union
OFF_E_FEATURES = _E + ffi.offsetof("struct ppc_kvm_sregs_e", "features")
OFF_E_UPDATE_SPECIAL = _E + ffi.offsetof("struct ppc_kvm_sregs_e", "update_special")
OFF_E_EPCR = _E + ffi.offsetof("struct ppc_kvm_sregs_e", "epcr")


@dataclass(frozen=True)
class Expect:
    """The result a step must give: "any" success, "fd" (≥ 0), "zero", "nonzero", "errno" (fails with `value`), "out"
    (succeeds and the little-endian field of `size` bytes at `offset` of the output, masked by `mask`, is `value`)."""

    kind: str
    value: int = 0
    offset: int = 0
    size: int = 0
    mask: int = 0


@dataclass(frozen=True)
class Step:
    """One ioctl: fd, name, powerpc request number, argument, expected result and why it is there."""

    fd: str
    name: str
    request: int
    value: int | None = None  # an argument passed by value
    arg: bytes = b""  # the struct passed by pointer, as the kernel reads it (zeros for an output buffer)
    reg: bytes = b""  # ONE_REG: the register's bytes; kvm_one_reg.addr points at them at execution
    patch: tuple[tuple[int, bytes], ...] = ()  # SET_SREGS: edits to this fd's last KVM_GET_SREGS bytes
    expect: Expect = Expect("zero")
    why: str = ""


def _step(fd: str, name: str, expect: Expect, why: str, **kw: object) -> Step:
    return Step(fd, name, PPC64[name], expect=expect, why=why, **kw)  # type: ignore[arg-type]


def check_extension(fd: str, cap: int, expect: Expect, why: str) -> Step:
    """KVM_CHECK_EXTENSION(cap) on `fd`."""
    return _step(fd, "KVM_CHECK_EXTENSION", expect, why, value=cap)


def create_vm(vm_type: int, expect: Expect = Expect("fd")) -> Step:
    """KVM_CREATE_VM(type) on /dev/kvm: 0 default, 1 HV, 2 PR."""
    return _step("kvm", "KVM_CREATE_VM", expect, f"VM type {vm_type} ({_TYPE_NAMES[vm_type]})", value=vm_type)


def create_vcpu(index: int) -> Step:
    """KVM_CREATE_VCPU(index) on the VM fd."""
    return _step("vm", "KVM_CREATE_VCPU", Expect("fd"), f"vCPU {index}", value=index)


def one_reg(fd: str, name: str, reg_id: int, value: int, expect: Expect, why: str) -> Step:
    """KVM_SET_ONE_REG/KVM_GET_ONE_REG of a 32-bit register (`value` is 0 for a read)."""
    return _step(fd, name, expect, why, arg=struct.pack("<QQ", reg_id, 0), reg=struct.pack("<I", value))


def get_pvinfo(why: str) -> Step:
    """KVM_PPC_GET_PVINFO on the VM fd into a zeroed kvm_ppc_pvinfo."""
    return _step("vm", "KVM_PPC_GET_PVINFO", Expect("zero"), why, arg=bytes(ffi.sizeof("struct kvm_ppc_pvinfo")))


def get_sregs(fd: str, expect: Expect, why: str) -> Step:
    """KVM_GET_SREGS into a zeroed kvm_sregs."""
    return _step(fd, "KVM_GET_SREGS", expect, why, arg=bytes(SREGS_SIZE))


def set_sregs(fd: str, patch: tuple[tuple[int, bytes], ...], why: str) -> Step:
    """KVM_SET_SREGS of the last KVM_GET_SREGS bytes with `patch` applied (reserved fields preserved)."""
    return _step(fd, "KVM_SET_SREGS", Expect("zero"), why, patch=patch)


_TYPE_NAMES = {0: "kernel default", 1: "KVM_VM_PPC_HV", 2: "KVM_VM_PPC_PR"}


def ppc_vm_type(request_accel: Accel, effective: EffectivePlatform, host: PpcHost) -> int:
    """KVM_CREATE_VM's type: 0 when AUTO and the kernel's default is the flavour chosen, else the forced type."""
    if request_accel is Accel.AUTO and effective.accel == host.default_accel:
        return 0
    return VM_TYPES[effective.accel]


def plan_ppc(effective: EffectivePlatform, vcpus: int, vm_type: int | None = None) -> list[Step]:
    """The ioctls that give a VM of `vcpus` vCPUs the platform `effective`, in order (pure)."""
    if vm_type is None:
        vm_type = VM_TYPES[effective.accel]
    steps = _probe_caps(effective)
    steps.append(create_vm(vm_type))
    steps += _vm_steps(effective)
    for i in range(vcpus):
        steps.append(create_vcpu(i))
        steps += _vcpu_steps(effective, f"vcpu{i}")
    return steps


def _probe_caps(effective: EffectivePlatform) -> list[Step]:
    nonzero = Expect("nonzero")
    steps = [check_extension("kvm", Cap.CHECK_EXTENSION_VM, nonzero, "VM-fd capability checks")]
    if effective.abi is Abi.SPAPR:
        steps.append(check_extension("kvm", Cap.PPC_PAPR, nonzero, "PAPR mode per vCPU"))
    if effective.accel == "hv" and is_logical_pvr(effective.compat_raw):
        steps.append(check_extension("kvm", Cap.ONE_REG, nonzero, "ARCH_COMPAT is a ONE_REG register"))
    if effective.abi is Abi.BOOKE:
        steps.append(check_extension("kvm", Cap.PPC_BOOKE_SREGS, nonzero, "BookE sregs features"))
    return steps


def _vm_steps(effective: EffectivePlatform) -> list[Step]:
    steps: list[Step] = []
    if effective.accel in ("hv", "pr"):
        # QEMU's kvmppc_is_pr(): only PR offers GET_PVINFO on a VM fd; this tells which flavour the kernel runs.
        want = Expect("zero") if effective.accel == "hv" else Expect("nonzero")
        steps.append(check_extension("vm", Cap.PPC_GET_PVINFO, want, f"flavour in use is {effective.accel}"))
    if Pv.KVM in effective.pv:
        steps.append(get_pvinfo("pv KVM hypercall sequence"))
    return steps


def _vcpu_steps(effective: EffectivePlatform, fd: str) -> list[Step]:
    steps: list[Step] = []
    if effective.abi is Abi.SPAPR:
        cap = struct.pack("<II4Q", Cap.PPC_PAPR, 0, 0, 0, 0, 0) + bytes(64)
        steps.append(_step(fd, "KVM_ENABLE_CAP", Expect("zero"), "sPAPR: KVM_CAP_PPC_PAPR", arg=cap))
    raw = effective.compat_raw
    pvr_check = Expect("out", raw, 0, 4)
    if effective.accel == "hv" and is_logical_pvr(raw):
        why = f"compat {effective.compat}"
        steps.append(one_reg(fd, "KVM_SET_ONE_REG", KVM_REG_PPC_ARCH_COMPAT, raw, Expect("zero"), why))
        steps.append(one_reg(fd, "KVM_GET_ONE_REG", KVM_REG_PPC_ARCH_COMPAT, 0, Expect("out", raw, 0, 4), "read back"))
    elif effective.accel == "hv":
        steps.append(get_sregs(fd, pvr_check, "the guest reads the host PVR"))
    elif effective.accel == "pr":
        steps.append(get_sregs(fd, Expect("zero"), "sregs to edit"))
        steps.append(set_sregs(fd, ((0, struct.pack("<I", raw)),), f"PVR 0x{raw:08x}"))
        steps.append(get_sregs(fd, pvr_check, "read back the PVR"))
    else:
        steps += _booke_steps(effective, fd, pvr_check)
    return steps


def _booke_steps(effective: EffectivePlatform, fd: str, pvr_check: Expect) -> list[Step]:
    """BookE: the host's PVR; on a 64-bit core, EPCR[ICM] (under KVM_SREGS_E_64) picks 64- or 32-bit interrupts."""
    steps = [get_sregs(fd, pvr_check, "BookE runs the host's core")]
    fam = family_of(effective.compat_raw)
    if fam is None or fam.bits != 64:
        return steps
    epcr = EPCR_ICM if effective.bits == 64 else 0
    patch = (
        (OFF_E_FEATURES, struct.pack("<I", SREGS_E_64)),
        (OFF_E_UPDATE_SPECIAL, bytes(4)),
        (OFF_E_EPCR, struct.pack("<I", epcr)),
    )
    steps.append(set_sregs(fd, patch, f"bits {effective.bits}: EPCR 0x{epcr:08x}"))
    steps.append(get_sregs(fd, Expect("out", epcr, OFF_E_EPCR, 4, EPCR_ICM), "read back EPCR[ICM]"))
    return steps


def plan_refusal_probe(request: PlatformRequest, host: PpcHost, refusal: PlatformRefused) -> list[Step]:
    """Steps whose EINVAL confirms a refusal on the real kernel ([] when no single ioctl shows it)."""
    einval = Expect("errno", errno.EINVAL)
    forced = {Accel.HV: "hv", Accel.PR: "pr"}.get(request.accel, "")
    if refusal.field == "accel" and forced and forced not in host.accels:
        return [create_vm(VM_TYPES[forced], einval)]
    if refusal.field in ("abi", "bits", "arch") and "book3s_pr is absent" in refusal.reason:
        return [create_vm(VM_TYPES["pr"], einval)]  # only book3s_pr could run it, and the kernel has none
    try:
        asked = parse_ppc_compat(request.compat)
    except Exception:
        return []
    accel = forced or host.default_accel
    if refusal.field != "compat" or not isinstance(asked, Level) or accel not in ("hv", "pr"):
        return []
    if accel not in host.accels:
        return []
    why = f"ARCH_COMPAT {asked.name} refused by {accel}"
    return [
        create_vm(VM_TYPES[accel]),
        create_vcpu(0),
        one_reg("vcpu0", "KVM_SET_ONE_REG", KVM_REG_PPC_ARCH_COMPAT, asked.logical_pvr, einval, why),
    ]
