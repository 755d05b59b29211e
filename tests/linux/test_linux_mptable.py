"""MP table: checksums, one processor entry per vCPU with the BSP flag on APIC id 0, ISA bus, IOAPIC, interrupts."""

from __future__ import annotations

import struct

import pytest
from kvmplat.agent.linux.mptable import IOAPIC_ADDR, LAPIC_ADDR, mptable

BASE = 0x9FC00
SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def _entries(table: bytes) -> list[bytes]:
    """Split the configuration table after its 44-byte header into entries by their type byte."""
    out, off = [], 44
    while off < len(table):
        size = SIZES[table[off]]
        out.append(table[off : off + size])
        off += size
    return out


@pytest.mark.parametrize("vcpus", [1, 2, 8, 254])
def test_mptable_structure(vcpus: int) -> None:
    """Floating pointer and configuration table are consistent and checksummed."""
    data = mptable(BASE, vcpus)
    floating, table = data[:16], data[16:]
    assert floating[:4] == b"_MP_" and sum(floating) % 256 == 0
    assert struct.unpack_from("<I", floating, 4)[0] == BASE + 16 and floating[8] == 1 and floating[9] == 4
    assert table[:4] == b"PCMP" and sum(table) % 256 == 0
    length, count, lapic = struct.unpack_from("<H", table, 4)[0], *struct.unpack_from("<HI", table, 34)
    assert length == len(table) and lapic == LAPIC_ADDR
    entries = _entries(table)
    assert len(entries) == count == vcpus + 2 + 16 + 2
    cpus = [e for e in entries if e[0] == 0]
    assert [(e[1], e[3]) for e in cpus] == [(i, 3 if i == 0 else 1) for i in range(vcpus)]
    ioapic = next(e for e in entries if e[0] == 2)
    assert ioapic[1] == vcpus and struct.unpack_from("<I", ioapic, 4)[0] == IOAPIC_ADDR
    assert [(e[5], e[6], e[7]) for e in entries if e[0] == 3] == [(irq, vcpus, irq) for irq in range(16)]
    assert [(e[1], e[6], e[7]) for e in entries if e[0] == 4] == [(3, 0, 0), (1, 0xFF, 1)]


@pytest.mark.parametrize("vcpus", [0, 255])
def test_mptable_rejects_impossible_counts(vcpus: int) -> None:
    """APIC ids are 8 bits and the IOAPIC takes id n."""
    with pytest.raises(ValueError, match="vcpus must be"):
        mptable(BASE, vcpus)
