"""The smallest ACPI a PC guest can be told about: an RSDP pointing to an RSDT with no tables ("this machine has no
ACPI tables"), so neither the bzImage decompressor nor the kernel scans the BIOS area for one.

Without an RSDP the decompressor's get_rsdp_addr() compares 8,192 paragraphs of 0xE0000-0xFFFFF against "RSD PTR "
before its first console line: ~164,000 instructions, a quarter of everything it runs, which on a host that emulates
each one (kvm_pvm) is ~0.2 s (counted with perf's kvm:kvm_emulate_insn). The RSDP is found at the first place the scan
looks and its address is also in boot_params.acpi_rsdp_addr (boot protocol 2.14).

The kernel then logs "ACPI BIOS Error (bug): Invalid table length 0x24 in RSDT/XSDT" (ACPICA wants at least one
entry), fails acpi_table_init() and disables ACPI at the very point where, without an RSDP, it failed to find one:
the boot goes on exactly as before, SMP and interrupts described by the MP table.
"""

from __future__ import annotations

import struct

__all__ = ["RSDP_ADDR", "acpi_tables"]

RSDP_ADDR = 0xE0000  # the first address of the BIOS area the kernel scans (ACPI_HI_RSDP_WINDOW_BASE)
RSDT_OFFSET = 0x20  # the RSDT right after the 20-byte RSDP, 16-byte aligned
OEM_ID = b"KVMPLT"
OEM_TABLE_ID = b"KVMPLAT "


def _checksum(data: bytes) -> int:
    """The byte that makes `data` plus itself sum to zero modulo 256."""
    return -sum(data) & 0xFF


def acpi_tables(base: int = RSDP_ADDR) -> bytes:
    """The ACPI 1.0 RSDP at `base` followed by an empty RSDT at base + RSDT_OFFSET."""
    rsdt = bytearray(struct.pack("<4sIBB6s8sI4sI", b"RSDT", 36, 1, 0, OEM_ID, OEM_TABLE_ID, 1, b"KVMP", 1))
    rsdt[9] = _checksum(bytes(rsdt))
    rsdp = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 0, base + RSDT_OFFSET))
    rsdp[8] = _checksum(bytes(rsdp))
    return bytes(rsdp).ljust(RSDT_OFFSET, b"\0") + bytes(rsdt)
