"""ABI tests: powerpc struct layouts (uapi asm/kvm.h, 6.1) and request numbers pinned to KVM_ABI.md §1."""

from __future__ import annotations

import pytest
from kvmplat.agent.kvm._kvmc import ffi
from kvmplat.agent.kvm.ioctls import GATING_CAP, PPC64, X86_64, Cap

KNOWN_PPC = {
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
    "KVM_PPC_GET_SMMU_INFO": 0x4250AEA6,  # _IOR(KVMIO, 0xa6, struct kvm_ppc_smmu_info), 592 bytes
}


@pytest.mark.parametrize("name", sorted(KNOWN_PPC))
def test_abi_ppc_request_numbers(name: str) -> None:
    """Each powerpc request equals the value computed from the kernel's headers."""
    assert PPC64[name] == KNOWN_PPC[name]


def test_abi_x86_numbers_unchanged_by_ppc_rows() -> None:
    """The PowerPC rows leave x86 alone; PPC_GET_SMMU_INFO is ppc-only and gated by cap 78."""
    assert X86_64["KVM_GET_SREGS"] == 0x8138AE83 and X86_64["KVM_PPC_GET_PVINFO"] == 0x4080AEA1
    assert "KVM_PPC_GET_SMMU_INFO" not in X86_64
    assert GATING_CAP["KVM_PPC_GET_SMMU_INFO"] is Cap.PPC_GET_SMMU_INFO == 78


SIZES = {
    "struct ppc_kvm_regs": 392,
    "struct ppc_kvm_sregs": 1232,
    "struct ppc_kvm_sregs_s": 1224,
    "struct ppc_kvm_sregs_e": 664,
    "struct ppc_kvm_sregs_fsl": 32,
    "struct kvm_ppc_pvinfo": 128,
    "struct kvm_ppc_smmu_info": 592,
    "struct kvm_ppc_mmuv3_cfg": 16,
}


@pytest.mark.parametrize("struct_name", sorted(SIZES))
def test_abi_ppc_struct_sizes(struct_name: str) -> None:
    """Sizes as the powerpc uapi structs have them (natural alignment on ppc64)."""
    assert ffi.sizeof(struct_name) == SIZES[struct_name]


OFFSETS = [
    ("struct ppc_kvm_regs", "msr", 40),
    ("struct ppc_kvm_regs", "gpr", 136),
    ("struct ppc_kvm_sregs", "pvr", 0),
    ("struct ppc_kvm_sregs", "u", 8),
    ("struct ppc_kvm_sregs_s", "ppc64", 8),
    ("struct ppc_kvm_sregs_s", "ppc32", 1032),
    ("struct ppc_kvm_sregs_e", "features", 256),
    ("struct ppc_kvm_sregs_e", "impl_id", 260),
    ("struct ppc_kvm_sregs_e", "update_special", 264),
    ("struct ppc_kvm_sregs_e", "sprg8", 272),
    ("struct ppc_kvm_sregs_e", "tb", 376),
    ("struct ppc_kvm_sregs_e", "num_iac", 432),
    ("struct ppc_kvm_sregs_e", "epcr", 444),
    ("struct ppc_kvm_sregs_e", "mas2", 456),
    ("struct ppc_kvm_sregs_e", "ivor_low", 480),
    ("struct ppc_kvm_sregs_e", "epsc", 660),
    ("struct ppc_kvm_sregs_fsl", "hid0", 16),
    ("struct kvm_ppc_pvinfo", "hcall", 4),
    ("struct kvm_ppc_smmu_info", "sps", 16),
]


@pytest.mark.parametrize(("struct_name", "fld", "offset"), OFFSETS)
def test_abi_ppc_struct_offsets(struct_name: str, fld: str, offset: int) -> None:
    """Field offsets of the Book3S (u.s) and BookE (u.e) views of kvm_sregs and the other ppc structs."""
    assert ffi.offsetof(struct_name, fld) == offset


def test_abi_sregs_union_views_share_offset_8() -> None:
    """u.s.sdr1 and u.e.impl both start the union at byte 8; slb[63] ends where ppc32 begins."""
    sregs = ffi.new("struct ppc_kvm_sregs *")
    base = int(ffi.cast("uintptr_t", sregs))
    assert int(ffi.cast("uintptr_t", ffi.addressof(sregs.u.s, "sdr1"))) - base == 8
    assert int(ffi.cast("uintptr_t", ffi.addressof(sregs.u.e, "features"))) - base == 8 + 256
    assert int(ffi.cast("uintptr_t", ffi.addressof(sregs.u.s.ppc32, "dbat"))) - base == 8 + 1032 + 128
