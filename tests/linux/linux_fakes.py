"""Small fake kernels with valid headers (a bzImage and an ELF vmlinux) and a readable dump of a GuestImage."""

from __future__ import annotations

import hashlib
import struct

from kvmplat.agent.guest.image import GuestImage, SegmentReg

MIB = 1 << 20
BZ_SETUP_SECTS = 1
BZ_PAYLOAD = bytes(range(256)) * 32  # 8 KiB of protected-mode "code"


def fake_bzimage(**overrides: int) -> bytes:
    """A protocol 2.15 bzImage with a 64-bit entry; `overrides` patch named header fields (offset, format)."""
    fields: dict[str, tuple[int, str, int]] = {
        "setup_sects": (0x1F1, "B", BZ_SETUP_SECTS),
        "boot_flag": (0x1FE, "H", 0xAA55),
        "jump": (0x200, "H", 0x66EB),  # jmp +0x66: the header ends at 0x268
        "version": (0x206, "H", 0x020F),
        "loadflags": (0x211, "B", 0x01),
        "code32_start": (0x214, "I", 0x100000),
        "initrd_addr_max": (0x22C, "I", 0x7FFFFFFF),
        "kernel_alignment": (0x230, "I", 0x200000),
        "relocatable_kernel": (0x234, "B", 1),
        "xloadflags": (0x236, "H", 0x1),
        "cmdline_size": (0x238, "I", 2047),
        "payload_offset": (0x248, "I", 0x100),
        "payload_length": (0x24C, "I", 0x1000),
        "pref_address": (0x258, "Q", 0x1000000),
        "init_size": (0x260, "I", 0x400000),
    }
    setup = bytearray((BZ_SETUP_SECTS + 1) * 512)
    setup[0x202:0x206] = b"HdrS"
    for name, (off, fmt, value) in fields.items():
        struct.pack_into("<" + fmt, setup, off, overrides.get(name, value))
    return bytes(setup) + BZ_PAYLOAD


ELF_TEXT = b"\x90" * 0x1000
ELF_DATA = b"\xcc" * 0x800


def fake_elf(
    entry: int = 0xFFFFFFFF81000000, machine: int = 62, elf_class: int = 2, e_type: int = 2, low_paddr: int = 0x1000000
) -> bytes:
    """An x86-64 ET_EXEC with two PT_LOADs (text at low_paddr, data+bss at +2 MiB) and a PT_NOTE, like vmlinux."""
    phoff, phnum = 64, 3
    text_off, data_off = 0x1000, 0x2000
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, e_type, machine, 1, entry, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    vbase = 0xFFFFFFFF81000000
    phdrs = [
        struct.pack("<IIQQQQQQ", 1, 5, text_off, vbase, low_paddr, len(ELF_TEXT), len(ELF_TEXT), 0x200000),
        struct.pack("<IIQQQQQQ", 1, 6, data_off, vbase + 0x200000, low_paddr + 0x200000, len(ELF_DATA), 0x3000, 4096),
        struct.pack("<IIQQQQQQ", 4, 4, 0, 0, 0, 0, 0, 4),
    ]
    out = bytearray(data_off + len(ELF_DATA))
    out[0:64] = ehdr
    out[phoff : phoff + 56 * phnum] = b"".join(phdrs)
    out[text_off : text_off + len(ELF_TEXT)] = ELF_TEXT
    out[data_off:] = ELF_DATA
    return bytes(out)


def _seg(reg: SegmentReg) -> str:
    """One segment register on a line."""
    f = reg
    return (
        f"base={f.base:#x} limit={f.limit:#x} sel={f.selector:#x} type={f.type:#x} p={f.present} dpl={f.dpl} "
        f"db={f.db} s={f.s} l={f.l} g={f.g}"
    )


def _hexdump(data: bytes, base: int, skip_zero: bool = True) -> list[str]:
    """16-byte rows as 'offset: hex', zero rows left out (the zero page is mostly zeros)."""
    rows = []
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        if skip_zero and not any(row):
            continue
        rows.append(f"  {base + off:#07x}: {row.hex(' ')}")
    return rows


def _at(image: GuestImage, gpa: int) -> bytes:
    """The segment placed exactly at `gpa`."""
    return next(s.data for s in image.segments if s.gpa == gpa)


def _page_tables(tables: bytes) -> list[str]:
    """Non-zero PML4/PDPT entries, the first and last PD entries, and a digest of all 24 KiB."""
    q = struct.unpack(f"<{len(tables) // 8}Q", tables)
    out = [f"  PML4[{i}] = {v:#x}" for i, v in enumerate(q[:512]) if v]
    out += [f"  PDPT[{i}] = {v:#x}" for i, v in enumerate(q[512:1024]) if v]
    pd = q[1024:]
    out += [f"  PD[{i}] = {pd[i]:#x}" for i in (0, 1, 2, len(pd) - 1)]
    out.append(f"  PD entries: {len(pd)}, sha256 of all tables {hashlib.sha256(tables).hexdigest()}")
    return out


def dump(image: GuestImage) -> str:
    """A stable, reviewable text form of a GuestImage: layout, CPU state, zero page, e820, GDT, page tables, MP."""
    lines = [f"description: {image.description}", "segments:"]
    for s in sorted(image.segments, key=lambda s: s.gpa):
        lines.append(f"  {s.gpa:#010x} +{len(s.data):#x} sha256:{hashlib.sha256(s.data).hexdigest()[:16]}")
    bsp = image.bsp
    lines.append("bsp.regs: " + " ".join(f"{k}={v:#x}" for k, v in sorted(bsp.regs.items())))
    lines.append("bsp.control: " + " ".join(f"{k}={v:#x}" for k, v in sorted(bsp.control.items())))
    lines += [f"bsp.{name}: {_seg(reg)}" for name, reg in sorted(bsp.segments.items())]
    lines.append(f"bsp.gdt: {bsp.gdt} bsp.idt: {bsp.idt} ap: {image.ap}")
    zero = _at(image, 0x7000)
    lines.append("e820:")
    for i in range(zero[0x1E8]):
        addr, size, kind = struct.unpack_from("<QQI", zero, 0x2D0 + 20 * i)
        lines.append(f"  [{addr:#x}, {addr + size:#x}) type {kind}")
    lines += ["zero page (non-zero rows):", *_hexdump(zero, 0)]
    gdt = _at(image, 0x500)
    lines.append("gdt: " + " ".join(f"{v:#018x}" for v in struct.unpack(f"<{len(gdt) // 8}Q", gdt)))
    lines += ["page tables:", *_page_tables(_at(image, 0x9000))]
    lines += ["mptable:", *_hexdump(_at(image, 0x9FC00), 0x9FC00, skip_zero=False)]
    lines.append(f"cmdline: {_at(image, 0x20000)!r}")
    return "\n".join(lines) + "\n"
