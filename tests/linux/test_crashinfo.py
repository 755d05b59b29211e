"""agent/runner/crashinfo.py without KVM: page-table walks over synthetic guest memory, KVM's reported bytes, and
the plain-language names of instructions kvm_pvm's emulator lacks."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvmplat.agent.runner.crashinfo import (
    CR0_PG,
    CR4_PAE,
    CR4_PSE,
    EFER_LMA,
    INSN_MAX,
    CpuView,
    describe_instruction,
    explain_emulation_failure,
    instruction_at,
    kvm_reported_bytes,
    translate,
)

PAGE = 4096
P, RW, PS = 0x1, 0x2, 0x80
LONG = {"cr0": CR0_PG | 1, "cr4": CR4_PAE, "efer": EFER_LMA | 0x100}


class Memory:
    """Sparse guest memory of `size` bytes: unwritten bytes read as zero, reads past the end raise ValueError
    (as GuestMemory.read does)."""

    def __init__(self, size: int = 1 << 32) -> None:
        self.size = size
        self.pages: dict[int, bytearray] = {}

    def write(self, gpa: int, data: bytes) -> None:
        """Stores `data` at `gpa`."""
        for i, b in enumerate(data):
            self.pages.setdefault((gpa + i) // PAGE, bytearray(PAGE))[(gpa + i) % PAGE] = b

    def read(self, gpa: int, length: int) -> bytes:
        """`length` bytes at `gpa`."""
        if gpa < 0 or gpa + length > self.size:
            raise ValueError(f"{gpa:#x}+{length} outside guest memory")
        return bytes(self.pages.get((gpa + i) // PAGE, bytes(PAGE))[(gpa + i) % PAGE] for i in range(length))


class LongModeTables:
    """4-level page tables built in a Memory, tables allocated from `next_table` upwards."""

    def __init__(self, mem: Memory, root: int = 0x10000) -> None:
        self.mem, self.root, self.next_table = mem, root, root + PAGE

    def _entry(self, table: int, index: int) -> int:
        return int.from_bytes(self.mem.read(table + index * 8, 8), "little")

    def _child(self, table: int, index: int) -> int:
        entry = self._entry(table, index)
        if entry & P:
            return entry & 0x000F_FFFF_FFFF_F000
        child, self.next_table = self.next_table, self.next_table + PAGE
        self.mem.write(table + index * 8, struct.pack("<Q", child | P | RW))
        return child

    def map(self, linear: int, phys: int, level: int = 1) -> None:
        """Maps the page holding `linear` to `phys`: level 1 is 4 KiB, 2 a 2 MiB page, 3 a 1 GiB page."""
        table = self.root
        for lvl in (4, 3, 2, 1):
            index = (linear >> (12 + 9 * (lvl - 1))) & 0x1FF
            if lvl == level:
                self.mem.write(table + index * 8, struct.pack("<Q", phys | P | RW | (PS if lvl > 1 else 0)))
                return
            table = self._child(table, index)

    def cpu(self, rip: int) -> CpuView:
        """A long-mode CpuView with cr3 at the root."""
        return CpuView(rip=rip, cs_base=0, cr3=self.root, **LONG)


def test_paging_off_is_identity() -> None:
    cpu = CpuView(rip=0, cs_base=0, cr0=1, cr3=0, cr4=0, efer=0)
    assert translate(Memory().read, cpu, 0x12345) == 0x12345


def test_long_mode_4k_2m_1g_pages() -> None:
    mem = Memory()
    pt = LongModeTables(mem)
    pt.map(0xFFFF_8880_0000_3000, 0x0054_3000)
    pt.map(0xFFFF_FFFF_8100_0000, 0x0100_0000, level=2)
    pt.map(0x0000_0040_0000_0000, 0x4000_0000, level=3)
    cpu = pt.cpu(0)
    assert translate(mem.read, cpu, 0xFFFF_8880_0000_3ABC) == 0x0054_3ABC
    assert translate(mem.read, cpu, 0xFFFF_FFFF_8112_3456) == 0x0112_3456
    assert translate(mem.read, cpu, 0x0000_0040_1234_5678) == 0x5234_5678
    assert translate(mem.read, cpu, 0xFFFF_8880_0000_4000) is None  # the next 4 KiB page is not mapped


def test_pae_three_levels() -> None:
    mem = Memory()
    pdpt, pd = 0x20000, 0x21000
    mem.write(pdpt + 3 * 8, struct.pack("<Q", pd | P))
    mem.write(pd + 8 * 8, struct.pack("<Q", 0x0060_0000 | P | RW | PS))  # 0xc1000000 -> 2 MiB page at 6 MiB
    cpu = CpuView(rip=0, cs_base=0, cr0=CR0_PG | 1, cr3=pdpt, cr4=CR4_PAE, efer=0)
    assert translate(mem.read, cpu, 0xC101_2345) == 0x0061_2345


def test_32bit_two_levels_with_and_without_pse() -> None:
    mem = Memory()
    pgd, pte = 0x30000, 0x31000
    mem.write(pgd + 0x300 * 4, struct.pack("<I", 0x0040_0000 | P | PS))  # a 4 MiB page at 4 MiB
    mem.write(pgd + 0x301 * 4, struct.pack("<I", pte | P))
    mem.write(pte + 5 * 4, struct.pack("<I", 0x0077_7000 | P))
    pse = CpuView(rip=0, cs_base=0, cr0=CR0_PG | 1, cr3=pgd, cr4=CR4_PSE, efer=0)
    assert translate(mem.read, pse, 0xC012_3456) == 0x0052_3456
    assert translate(mem.read, pse, 0xC040_5ABC) == 0x0077_7ABC


def test_instruction_at_crosses_pages_mapped_apart() -> None:
    mem = Memory()
    pt = LongModeTables(mem)
    rip = 0xFFFF_FFFF_8100_0FFA  # six bytes on one page, the rest on the next, mapped far away
    pt.map(rip, 0x0200_0000)
    pt.map(rip + PAGE, 0x0030_0000)
    code = bytes(range(0x40, 0x40 + INSN_MAX))
    mem.write(0x0200_0FFA, code[:6])
    mem.write(0x0030_0000, code[6:])
    assert instruction_at(mem.read, pt.cpu(rip)) == code


def test_instruction_at_stops_at_unmapped_page_and_outside_memory() -> None:
    mem = Memory(size=64 << 20)
    pt = LongModeTables(mem)
    rip = 0xFFFF_FFFF_8100_0FFE
    pt.map(rip, 0x0100_0000)
    mem.write(0x0100_0FFE, b"\x0f\xc7")
    assert instruction_at(mem.read, pt.cpu(rip)) == b"\x0f\xc7"
    pt.map(0x7000_0000, 0x8000_0000)  # beyond the 64 MiB of RAM
    assert instruction_at(mem.read, pt.cpu(0x7000_0000)) == b""


def test_real_mode_uses_cs_base() -> None:
    mem = Memory(size=1 << 20)
    mem.write(0xF0010, b"\xcc\x90")
    cpu = CpuView(rip=0x10, cs_base=0xF0000, cr0=0, cr3=0, cr4=0, efer=0)
    assert instruction_at(mem.read, cpu, 2) == b"\xcc\x90"


@settings(max_examples=60, deadline=None)
@given(
    pages=st.dictionaries(
        st.integers(min_value=0, max_value=(1 << 36) - 1),  # 4 KiB page numbers of a 48-bit address space
        st.integers(min_value=0x100, max_value=(1 << 20) - 1),  # physical page numbers (above the tables)
        min_size=1,
        max_size=8,
    ),
    offset=st.integers(min_value=0, max_value=PAGE - 1),
)
def test_translate_matches_every_mapping(pages: dict[int, int], offset: int) -> None:
    mem = Memory(size=1 << 40)
    pt = LongModeTables(mem, root=0x1000)
    for vpn, ppn in pages.items():
        pt.map(_canonical(vpn * PAGE), ppn * PAGE)
    cpu = pt.cpu(0)
    for vpn, ppn in pages.items():
        assert translate(mem.read, cpu, _canonical(vpn * PAGE) + offset) == ppn * PAGE + offset


def _canonical(linear: int) -> int:
    """Sign-extends bit 47, as a 4-level guest's addresses are."""
    return linear | 0xFFFF_0000_0000_0000 if linear & (1 << 47) else linear


def test_kvm_reported_bytes() -> None:
    insn = bytes.fromhex("f0480fc70e")
    raw = bytes([len(insn)]) + insn.ljust(15, b"\0")
    data = (1, *struct.unpack("<2Q", raw))
    assert kvm_reported_bytes(data) == insn
    assert kvm_reported_bytes((0, *data[1:])) == b""  # KVM did not set the instruction-bytes flag
    assert kvm_reported_bytes(()) == b""


@pytest.mark.parametrize(
    ("hexbytes", "name"),
    [
        ("480fc70e", "cmpxchg16b"),
        ("f0480fc70e", "cmpxchg16b"),
        ("65f0480fc70e", "cmpxchg16b"),
        ("0fae2e", "xrstor"),
        ("480fae6e40", "xrstor"),
        ("0fae26", "xsave"),
        ("cc", "int3"),
        ("90", ""),
        ("", ""),
        ("0fae", ""),  # truncated: no ModRM byte to tell the instruction apart
    ],
)
def test_describe_instruction(hexbytes: str, name: str) -> None:
    described = describe_instruction(bytes.fromhex(hexbytes))
    assert described.startswith(name) if name else described == ""


def test_explain_names_bytes_rip_and_why() -> None:
    text = explain_emulation_failure("KVM internal error: x", bytes.fromhex("480fc70e"), 0xFFFFFFFF81234567)
    assert "48 0f c7 0e" in text and "0xffffffff81234567" in text and "cmpxchg16b" in text
    assert "emulator does not implement it" in text and "kvm_pvm" in text
    assert "unreadable" in explain_emulation_failure("x", b"", 0)
