"""KVM ioctl request numbers, computed by the kernel's `_IOC` formula for each architecture's encoding.

x86 (asm-generic) packs dir:2 | size:14 | type:8 | nr:8 with NONE=0, WRITE=1, READ=2; powerpc packs dir:3 | size:13
with NONE=1, WRITE=4, READ=2 (reference/KVM_ABI.md §1). Sizes come from the cffi definitions (`ffi.sizeof`), and
each request is declared as the header declares it, even where the declared size or direction is not what the
kernel really does (KVM_GET_SUPPORTED_CPUID declares only the 8-byte header; KVM_PPC_GET_PVINFO is `_IOW`).
"""

from __future__ import annotations

import enum
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kvmplat.agent.kvm._kvmc import ffi

__all__ = [
    "HOST_ARCH",
    "KVMIO",
    "PPC64",
    "REQUESTS",
    "X86_64",
    "Arch",
    "Cap",
    "IocLayout",
    "ioc",
    "requests_for",
    "struct_of",
]

KVMIO = 0xAE


@dataclass(frozen=True)
class IocLayout:
    """How an architecture packs _IOC(dir, type, nr, size)."""

    sizebits: int
    dirshift: int
    none: int
    write: int
    read: int


class Arch(enum.Enum):
    """Architectures whose KVM ioctl encoding kvmplat knows."""

    X86_64 = IocLayout(sizebits=14, dirshift=30, none=0, write=1, read=2)
    PPC64 = IocLayout(sizebits=13, dirshift=29, none=1, write=4, read=2)


def ioc(arch: Arch, direction: str, nr: int, size: int = 0) -> int:
    """The request number of _IO/_IOR/_IOW/_IOWR(KVMIO, nr, size) on `arch` (direction "", "R", "W" or "RW")."""
    lay = arch.value
    bits = {"": lay.none, "R": lay.read, "W": lay.write, "RW": lay.read | lay.write}[direction]
    if size >= 1 << lay.sizebits:
        raise ValueError(f"ioctl size {size} does not fit {lay.sizebits} bits")
    return (bits << lay.dirshift) | (size << 16) | (KVMIO << 8) | nr


class Cap(enum.IntEnum):
    """KVM_CHECK_EXTENSION capabilities kvmplat asks about (uapi linux/kvm.h)."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    MP_STATE = 14
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT2 = 33
    PIT_STATE2 = 35
    ADJUST_CLOCK = 39
    VCPU_EVENTS = 41
    SET_IDENTITY_MAP_ADDR = 37
    PPC_SEGSTATE = 43
    DEBUGREGS = 50
    PPC_PAIRED_SINGLES = 48
    PPC_OSI = 52
    ENABLE_CAP = 54
    XSAVE = 55
    XCRS = 56
    PPC_GET_PVINFO = 57
    PPC_BOOKE_SREGS = 62
    PPC_SMT = 64
    MAX_VCPUS = 66
    PPC_PAPR = 68
    ONE_REG = 70
    TSC_DEADLINE_TIMER = 72
    PPC_GET_SMMU_INFO = 78
    ENABLE_CAP_VM = 98
    CHECK_EXTENSION_VM = 105
    MAX_VCPU_ID = 128
    PPC_MMU_RADIX = 134
    PPC_MMU_HASH_V3 = 135
    IMMEDIATE_EXIT = 136
    PPC_NESTED_HV = 160
    HYPERV_CPUID = 167
    SYS_HYPERV_CPUID = 191
    BINARY_STATS_FD = 203


# (name, direction, nr, argument type per arch or None, gating capability), in <linux/kvm.h> order.
_X, _P = "x86", "ppc"
_TABLE: tuple[tuple[str, str, int, dict[str, str] | None, Cap | None], ...] = (
    ("KVM_GET_API_VERSION", "", 0x00, None, None),
    ("KVM_CREATE_VM", "", 0x01, None, None),
    ("KVM_GET_MSR_INDEX_LIST", "RW", 0x02, {_X: "struct kvm_msr_list"}, None),
    ("KVM_CHECK_EXTENSION", "", 0x03, None, None),
    ("KVM_GET_VCPU_MMAP_SIZE", "", 0x04, None, None),
    ("KVM_GET_SUPPORTED_CPUID", "RW", 0x05, {_X: "struct kvm_cpuid2"}, Cap.EXT_CPUID),
    ("KVM_CREATE_VCPU", "", 0x41, None, None),
    ("KVM_GET_DIRTY_LOG", "W", 0x42, {_X: "struct kvm_dirty_log"}, None),
    (
        "KVM_SET_USER_MEMORY_REGION",
        "W",
        0x46,
        {_X: "struct kvm_userspace_memory_region", _P: "struct kvm_userspace_memory_region"},
        Cap.USER_MEMORY,
    ),
    ("KVM_SET_TSS_ADDR", "", 0x47, None, Cap.SET_TSS_ADDR),
    ("KVM_SET_IDENTITY_MAP_ADDR", "W", 0x48, {_X: "uint64_t"}, Cap.SET_IDENTITY_MAP_ADDR),
    ("KVM_CREATE_IRQCHIP", "", 0x60, None, Cap.IRQCHIP),
    ("KVM_IRQ_LINE", "W", 0x61, {_X: "struct kvm_irq_level", _P: "struct kvm_irq_level"}, Cap.IRQCHIP),
    ("KVM_GET_IRQCHIP", "RW", 0x62, {_X: "struct kvm_irqchip"}, Cap.IRQCHIP),
    ("KVM_SET_IRQCHIP", "R", 0x63, {_X: "struct kvm_irqchip"}, Cap.IRQCHIP),
    ("KVM_CREATE_PIT2", "W", 0x77, {_X: "struct kvm_pit_config"}, Cap.PIT2),
    ("KVM_SET_CLOCK", "W", 0x7B, {_X: "struct kvm_clock_data"}, Cap.ADJUST_CLOCK),
    ("KVM_GET_CLOCK", "R", 0x7C, {_X: "struct kvm_clock_data"}, Cap.ADJUST_CLOCK),
    ("KVM_RUN", "", 0x80, None, None),
    ("KVM_GET_REGS", "R", 0x81, {_X: "struct kvm_regs", _P: "struct ppc_kvm_regs"}, None),
    ("KVM_SET_REGS", "W", 0x82, {_X: "struct kvm_regs", _P: "struct ppc_kvm_regs"}, None),
    ("KVM_GET_SREGS", "R", 0x83, {_X: "struct kvm_sregs", _P: "struct ppc_kvm_sregs"}, None),
    ("KVM_SET_SREGS", "W", 0x84, {_X: "struct kvm_sregs", _P: "struct ppc_kvm_sregs"}, None),
    ("KVM_GET_MSRS", "RW", 0x88, {_X: "struct kvm_msrs"}, None),
    ("KVM_SET_MSRS", "W", 0x89, {_X: "struct kvm_msrs"}, None),
    ("KVM_GET_FPU", "R", 0x8C, {_X: "struct kvm_fpu"}, None),
    ("KVM_SET_FPU", "W", 0x8D, {_X: "struct kvm_fpu"}, None),
    ("KVM_GET_LAPIC", "R", 0x8E, {_X: "struct kvm_lapic_state"}, Cap.IRQCHIP),
    ("KVM_SET_LAPIC", "W", 0x8F, {_X: "struct kvm_lapic_state"}, Cap.IRQCHIP),
    ("KVM_SET_CPUID2", "W", 0x90, {_X: "struct kvm_cpuid2"}, Cap.EXT_CPUID),
    ("KVM_GET_MP_STATE", "R", 0x98, {_X: "struct kvm_mp_state", _P: "struct kvm_mp_state"}, None),
    ("KVM_SET_MP_STATE", "W", 0x99, {_X: "struct kvm_mp_state", _P: "struct kvm_mp_state"}, None),
    ("KVM_GET_PIT2", "R", 0x9F, {_X: "struct kvm_pit_state2"}, Cap.PIT_STATE2),
    ("KVM_SET_PIT2", "W", 0xA0, {_X: "struct kvm_pit_state2"}, Cap.PIT_STATE2),
    ("KVM_GET_VCPU_EVENTS", "R", 0x9F, {_X: "struct kvm_vcpu_events"}, Cap.VCPU_EVENTS),
    ("KVM_SET_VCPU_EVENTS", "W", 0xA0, {_X: "struct kvm_vcpu_events"}, Cap.VCPU_EVENTS),
    ("KVM_GET_DEBUGREGS", "R", 0xA1, {_X: "struct kvm_debugregs"}, Cap.DEBUGREGS),
    ("KVM_SET_DEBUGREGS", "W", 0xA2, {_X: "struct kvm_debugregs"}, Cap.DEBUGREGS),
    ("KVM_PPC_GET_PVINFO", "W", 0xA1, {_X: "struct kvm_ppc_pvinfo", _P: "struct kvm_ppc_pvinfo"}, Cap.PPC_GET_PVINFO),
    ("KVM_ENABLE_CAP", "W", 0xA3, {_X: "struct kvm_enable_cap", _P: "struct kvm_enable_cap"}, Cap.ENABLE_CAP),
    ("KVM_GET_XSAVE", "R", 0xA4, {_X: "struct kvm_xsave"}, Cap.XSAVE),
    ("KVM_SET_XSAVE", "W", 0xA5, {_X: "struct kvm_xsave"}, Cap.XSAVE),
    ("KVM_GET_XCRS", "R", 0xA6, {_X: "struct kvm_xcrs"}, Cap.XCRS),
    ("KVM_SET_XCRS", "W", 0xA7, {_X: "struct kvm_xcrs"}, Cap.XCRS),
    ("KVM_PPC_GET_SMMU_INFO", "R", 0xA6, {_P: "struct kvm_ppc_smmu_info"}, Cap.PPC_GET_SMMU_INFO),
    ("KVM_GET_ONE_REG", "W", 0xAB, {_X: "struct kvm_one_reg", _P: "struct kvm_one_reg"}, Cap.ONE_REG),
    ("KVM_SET_ONE_REG", "W", 0xAC, {_X: "struct kvm_one_reg", _P: "struct kvm_one_reg"}, Cap.ONE_REG),
    ("KVM_PPC_CONFIGURE_V3_MMU", "W", 0xAF, {_P: "struct kvm_ppc_mmuv3_cfg"}, Cap.PPC_MMU_RADIX),
    ("KVM_GET_SUPPORTED_HV_CPUID", "RW", 0xC1, {_X: "struct kvm_cpuid2"}, Cap.SYS_HYPERV_CPUID),
    ("KVM_GET_STATS_FD", "", 0xCE, None, Cap.BINARY_STATS_FD),
)

GATING_CAP: Mapping[str, Cap | None] = MappingProxyType({row[0]: row[4] for row in _TABLE})


def requests_for(arch: Arch) -> Mapping[str, int]:
    """Every request kvmplat uses on `arch`, by its kernel name."""
    key = _X if arch is Arch.X86_64 else _P
    out: dict[str, int] = {}
    for name, direction, nr, types, _cap in _TABLE:
        if types is None:
            out[name] = ioc(arch, direction, nr)
        elif key in types:
            out[name] = ioc(arch, direction, nr, ffi.sizeof(types[key]))
    return MappingProxyType(out)


def struct_of(name: str, arch: Arch | None = None) -> str:
    """The cffi struct type that request `name` passes on `arch` (default: this host's)."""
    key = _X if (arch or HOST_ARCH) is Arch.X86_64 else _P
    types = next(row[3] for row in _TABLE if row[0] == name)
    if types is None or key not in types:
        raise KeyError(f"{name} passes no struct on {(arch or HOST_ARCH).name}")
    return types[key]


X86_64 = requests_for(Arch.X86_64)
PPC64 = requests_for(Arch.PPC64)
HOST_ARCH = Arch.PPC64 if platform.machine().startswith("ppc") else Arch.X86_64
REQUESTS = PPC64 if HOST_ARCH is Arch.PPC64 else X86_64
