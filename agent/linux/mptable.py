"""Intel MultiProcessor Specification 1.4 tables, so an SMP guest without ACPI finds every vCPU and the IOAPIC.

Layout follows Firecracker's: the floating pointer in the last KB of base memory (one of the three places Linux's
find_smp_config() scans), the configuration table right after it. Entries: one processor per vCPU (APIC ids
0..n-1, the BSP flag on 0), one ISA bus, the IOAPIC at 0xfec00000 with id n, ISA IRQs 0-15 wired to IOAPIC pins
0-15 (KVM's default GSI routing does the same), ExtINT on LINT0 of the BSP and NMI on LINT1 of every CPU.
"""

from __future__ import annotations

import struct

__all__ = ["IOAPIC_ADDR", "LAPIC_ADDR", "MAX_VCPUS", "mptable"]

LAPIC_ADDR = 0xFEE00000
IOAPIC_ADDR = 0xFEC00000
MAX_VCPUS = 254  # APIC ids are 8 bits and the IOAPIC takes id n; 0xff means "all"
SPEC_REV = 4  # MP spec 1.4
APIC_VERSION = 0x14  # integrated local APIC
IOAPIC_VERSION = 0x11
CPU_SIGNATURE = 0x600  # family 6; Linux only prints it
CPU_FEATURES = 0x201  # FPU | APIC

# Entry types and their fields.
MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_INTSRC, MP_LINTSRC = 0, 1, 2, 3, 4
CPU_ENABLED, CPU_BSP = 0x1, 0x2
MP_INT, MP_NMI, MP_EXTINT = 0, 1, 3
ISA_BUS_ID = 0
ISA_IRQS = 16


def _checksum(data: bytes) -> int:
    """The byte that makes `data` plus itself sum to zero modulo 256."""
    return -sum(data) & 0xFF


def _entries(vcpus: int) -> list[bytes]:
    """The configuration table's entries in the order the spec asks for (processors, buses, IOAPICs, interrupts)."""
    ioapic_id = vcpus
    out = [
        struct.pack(
            "<BBBBII8x",
            MP_PROCESSOR,
            apic_id,
            APIC_VERSION,
            CPU_ENABLED | (CPU_BSP if apic_id == 0 else 0),
            CPU_SIGNATURE,
            CPU_FEATURES,
        )
        for apic_id in range(vcpus)
    ]
    out.append(struct.pack("<BB6s", MP_BUS, ISA_BUS_ID, b"ISA   "))
    out.append(struct.pack("<BBBBI", MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1, IOAPIC_ADDR))
    out += [struct.pack("<BBHBBBB", MP_INTSRC, MP_INT, 0, ISA_BUS_ID, irq, ioapic_id, irq) for irq in range(ISA_IRQS)]
    out.append(struct.pack("<BBHBBBB", MP_LINTSRC, MP_EXTINT, 0, ISA_BUS_ID, 0, 0, 0))
    out.append(struct.pack("<BBHBBBB", MP_LINTSRC, MP_NMI, 0, ISA_BUS_ID, 0, 0xFF, 1))
    return out


def mptable(base: int, vcpus: int) -> bytes:
    """The floating pointer at `base` followed by the configuration table for `vcpus` processors."""
    if not 1 <= vcpus <= MAX_VCPUS:
        raise ValueError(f"vcpus must be 1..{MAX_VCPUS}, got {vcpus}")
    entries = _entries(vcpus)
    body = b"".join(entries)
    length = 44 + len(body)
    oem, product = b"KVMPLAT ", b"KVMPLAT-VM  "
    header = struct.pack(
        "<4sHBB8s12sIHHIHBx", b"PCMP", length, SPEC_REV, 0, oem, product, 0, 0, len(entries), LAPIC_ADDR, 0, 0
    )
    table = bytearray(header + body)
    table[7] = _checksum(bytes(table))
    config_addr = base + 16
    # feature bytes all zero: a configuration table is present and the IMCR is absent (virtual-wire mode)
    floating = bytearray(struct.pack("<4sIBBB5x", b"_MP_", config_addr, 1, SPEC_REV, 0))
    floating[10] = _checksum(bytes(floating))
    return bytes(floating + table)
