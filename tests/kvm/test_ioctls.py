"""ioctl numbers from the _IOC formula, pinned to values the kernel headers give (reference/KVM_ABI.md §1, §3)."""

from __future__ import annotations

import pytest
from kvmplat.agent.kvm.ioctls import GATING_CAP, PPC64, X86_64, Arch, Cap, ioc

X86_KNOWN = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48,
    "KVM_CREATE_IRQCHIP": 0xAE60,
    "KVM_IRQ_LINE": 0x4008AE61,
    "KVM_CREATE_PIT2": 0x4040AE77,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_GET_MP_STATE": 0x8004AE98,
    "KVM_SET_MP_STATE": 0x4004AE99,
    "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_GET_ONE_REG": 0x4010AEAB,
    "KVM_SET_ONE_REG": 0x4010AEAC,
    "KVM_GET_SUPPORTED_HV_CPUID": 0xC008AEC1,
    "KVM_GET_STATS_FD": 0xAECE,
    "KVM_PPC_GET_PVINFO": 0x4080AEA1,
}
PPC_KNOWN = {
    "KVM_GET_API_VERSION": 0x2000AE00,
    "KVM_CREATE_VM": 0x2000AE01,
    "KVM_CHECK_EXTENSION": 0x2000AE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0x2000AE04,
    "KVM_CREATE_VCPU": 0x2000AE41,
    "KVM_SET_USER_MEMORY_REGION": 0x8020AE46,
    "KVM_RUN": 0x2000AE80,
    "KVM_GET_REGS": 0x4188AE81,
    "KVM_SET_REGS": 0x8188AE82,
    "KVM_GET_SREGS": 0x44D0AE83,
    "KVM_SET_SREGS": 0x84D0AE84,
    "KVM_ENABLE_CAP": 0x8068AEA3,
    "KVM_GET_ONE_REG": 0x8010AEAB,
    "KVM_SET_ONE_REG": 0x8010AEAC,
    "KVM_PPC_GET_PVINFO": 0x8080AEA1,
    "KVM_PPC_CONFIGURE_V3_MMU": 0x8010AEAF,
    "KVM_GET_STATS_FD": 0x2000AECE,
}


@pytest.mark.parametrize("name", sorted(X86_KNOWN))
def test_x86_request_numbers(name: str) -> None:
    assert X86_64[name] == X86_KNOWN[name], f"{name}: {X86_64[name]:#x}"


@pytest.mark.parametrize("name", sorted(PPC_KNOWN))
def test_powerpc_request_numbers(name: str) -> None:
    assert PPC64[name] == PPC_KNOWN[name], f"{name}: {PPC64[name]:#x}"


def test_encodings_differ_in_direction_bits() -> None:
    assert ioc(Arch.X86_64, "", 0x80) == 0xAE80
    assert ioc(Arch.PPC64, "", 0x80) == 0x2000AE80  # powerpc's _IOC_NONE is 1, at bit 29
    assert ioc(Arch.X86_64, "RW", 0x05, 8) == 0xC008AE05
    assert ioc(Arch.PPC64, "RW", 0x05, 8) == 0xC008AE05  # READ|WRITE = 6 << 29 = 3 << 30


def test_size_field_overflow_is_refused() -> None:
    with pytest.raises(ValueError):
        ioc(Arch.PPC64, "R", 0x83, 1 << 13)
    assert ioc(Arch.X86_64, "R", 0x83, (1 << 13)) > 0


def test_gating_caps_name_real_capabilities() -> None:
    assert GATING_CAP["KVM_SET_CPUID2"] is Cap.EXT_CPUID
    assert GATING_CAP["KVM_RUN"] is None
    assert all(c is None or isinstance(c, Cap) for c in GATING_CAP.values())
