"""Where the Linux loaders put things in guest physical memory, and the x86-64 entry state they hand the kernel.

The low 1 MiB holds the loader's own structures (Firecracker's layout, with the GDT selectors the boot protocol names):

    0x00500  GDT: null, null, __BOOT_CS 0x10 (64-bit code), __BOOT_DS 0x18 (data), TSS 0x20
    0x00520  IDT (empty; the kernel installs its own before enabling interrupts)
    0x07000  boot_params ("zero page", 4 KiB)
    0x08ff0  initial stack pointer (grows down into 0x8000..0x8fff)
    0x09000  PML4, 0x0a000 PDPT, 0x0b000..0x0efff four page directories (2 MiB pages, identity, first 4 GiB)
    0x20000  kernel command line (at most 64 KiB)
    0x9fc00  MP floating pointer + configuration table (last KB of base memory, reserved up to 1 MiB)
    0xe0000  ACPI RSDP and an empty RSDT (kvmplat.agent.linux.acpi: spares the kernel a scan of the BIOS area)
    0x100000 RAM for the kernel; bzImage at pref_address (16 MiB for Debian) when relocatable, else 1 MiB;
             ELF segments at their p_paddr; the initramfs at the top, under initrd_addr_max.

e820: RAM [0, 0x9fc00), reserved [0x9fc00, 1 MiB), RAM [1 MiB, memory end).
"""

from __future__ import annotations

import functools
import struct

from kvmplat.agent.guest.image import CpuState, Segment, SegmentReg

__all__ = [
    "BOOT_CS",
    "BOOT_DS",
    "CMDLINE_ADDR",
    "CMDLINE_MAX",
    "E820_RAM",
    "E820_RESERVED",
    "GDT_ADDR",
    "HIMEM",
    "IDT_ADDR",
    "MAX_MEMORY",
    "MPTABLE_ADDR",
    "PML4_ADDR",
    "STACK_TOP",
    "ZERO_PAGE_ADDR",
    "e820_map",
    "entry_state",
    "gdt_bytes",
    "page_tables",
]

GDT_ADDR = 0x500
IDT_ADDR = 0x520
ZERO_PAGE_ADDR = 0x7000
STACK_TOP = 0x8FF0
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000
PD_COUNT = 4  # 4 x 512 x 2 MiB = 4 GiB identity mapped
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000
MPTABLE_ADDR = 0x9FC00
HIMEM = 0x100000
# The runner maps one RAM slot at GPA 0; above 3 GiB it would cover the IOAPIC/LAPIC windows (0xfec00000, 0xfee00000)
# that need a hole below 4 GiB, which does not exist yet.
MAX_MEMORY = 3 << 30

E820_RAM = 1
E820_RESERVED = 2

BOOT_CS = 0x10  # the selectors the 64-bit boot protocol requires (Documentation/arch/x86/boot.rst)
BOOT_DS = 0x18
BOOT_TSS = 0x20

# Page-table entry bits: present, writable, page size (2 MiB leaf in a PD).
_P, _RW, _PS = 0x1, 0x2, 0x80

# CR0/CR4/EFER bits for long mode.
CR0_PE, CR0_ET, CR0_NE, CR0_PG = 0x1, 0x10, 0x20, 0x80000000
CR4_PAE = 0x20
EFER_LME, EFER_LMA = 0x100, 0x400


def e820_map(memory_size: int) -> list[tuple[int, int, int]]:
    """The e820 table as (address, size, type) for one RAM slot of `memory_size` bytes at GPA 0."""
    return [
        (0, MPTABLE_ADDR, E820_RAM),
        (MPTABLE_ADDR, HIMEM - MPTABLE_ADDR, E820_RESERVED),
        (HIMEM, memory_size - HIMEM, E820_RAM),
    ]


def _gdt_entry(flags: int, base: int, limit: int) -> int:
    """Pack a segment descriptor the way the kernel's GDT_ENTRY() macro does."""
    return (
        ((base & 0xFF000000) << 32)
        | ((flags & 0xF0FF) << 40)
        | ((limit & 0xF0000) << 32)
        | ((base & 0x00FFFFFF) << 16)
        | (limit & 0x0000FFFF)
    )


# flags: 0xa09b = G, L, present, code exec/read accessed; 0xc093 = G, D/B, present, data r/w accessed;
# 0x008b = present, busy 64-bit TSS.
_GDT = (
    0,
    0,
    _gdt_entry(0xA09B, 0, 0xFFFFF),
    _gdt_entry(0xC093, 0, 0xFFFFF),
    _gdt_entry(0x008B, 0, 0xFFFFF),
    0,  # upper half of the 16-byte TSS descriptor
)


def gdt_bytes() -> bytes:
    """The boot GDT as placed at GDT_ADDR."""
    return struct.pack(f"<{len(_GDT)}Q", *_GDT)


@functools.cache  # constant, and built on every VM start
def page_tables() -> bytes:
    """PML4, PDPT and four PDs identity-mapping the first 4 GiB with 2 MiB pages, placed contiguously at PML4_ADDR."""
    pml4 = struct.pack("<Q", PDPT_ADDR | _P | _RW).ljust(4096, b"\0")
    pdpt = b"".join(struct.pack("<Q", PD_ADDR + i * 4096 | _P | _RW) for i in range(PD_COUNT)).ljust(4096, b"\0")
    pds = b"".join(struct.pack("<Q", (i << 21) | _P | _RW | _PS) for i in range(PD_COUNT * 512))
    return pml4 + pdpt + pds


def _seg(selector: int, **kw: int) -> SegmentReg:
    """A flat 4 GiB segment (granular limit) with the given selector."""
    return SegmentReg(base=0, limit=0xFFFFFFFF, selector=selector, present=1, dpl=0, s=1, g=1, **kw)


def entry_state(entry: int) -> CpuState:
    """The 64-bit boot protocol's entry state: long mode, identity paging, flat segments, rsi -> boot_params."""
    code = _seg(BOOT_CS, type=0xB, l=1, db=0)
    data = _seg(BOOT_DS, type=0x3, l=0, db=1)
    tss = SegmentReg(base=0, limit=0xFFFFF, selector=BOOT_TSS, type=0xB, present=1, s=0, g=0)
    return CpuState(
        regs={"rip": entry, "rsi": ZERO_PAGE_ADDR, "rsp": STACK_TOP, "rbp": STACK_TOP, "rflags": 0x2},
        segments={"cs": code, "ds": data, "es": data, "fs": data, "gs": data, "ss": data, "tr": tss},
        control={
            "cr0": CR0_PE | CR0_ET | CR0_NE | CR0_PG,
            "cr3": PML4_ADDR,
            "cr4": CR4_PAE,
            "efer": EFER_LME | EFER_LMA,
        },
        gdt=(GDT_ADDR, len(_GDT) * 8 - 1),
        idt=(IDT_ADDR, 0),
    )


def fixed_segments() -> list[Segment]:
    """The structures every Linux boot places regardless of kernel: GDT and page tables."""
    return [Segment(GDT_ADDR, gdt_bytes()), Segment(PML4_ADDR, page_tables())]


def entry_state_32(entry: int) -> CpuState:
    """The 32-bit boot protocol's entry state: protected mode, paging off, flat 4 GiB segments, esi -> boot_params.

    Used for bzImages: the decompressor's startup_32 builds its own 4 GiB identity map and reuses it, where entered
    at startup_64 on our tables it allocates and byte-clears six more page-table pages, ~90,000 instructions that
    cost ~0.1 s on a host that emulates every guest instruction (kvm_pvm). QEMU enters the same way."""
    code = _seg(BOOT_CS, type=0xB, l=0, db=1)
    data = _seg(BOOT_DS, type=0x3, l=0, db=1)
    tss = SegmentReg(base=0, limit=0xFFFFF, selector=BOOT_TSS, type=0xB, present=1, s=0, g=0)
    return CpuState(
        regs={"rip": entry, "rsi": ZERO_PAGE_ADDR, "rsp": STACK_TOP, "rflags": 0x2},
        segments={"cs": code, "ds": data, "es": data, "fs": data, "gs": data, "ss": data, "tr": tss},
        control={"cr0": CR0_PE | CR0_ET | CR0_NE, "cr3": 0, "cr4": 0, "efer": 0},
        gdt=(GDT_ADDR, len(_GDT) * 8 - 1),
        idt=(IDT_ADDR, 0),
    )
