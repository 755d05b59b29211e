"""ELF vmlinux: PT_LOAD segments at their physical addresses, entered at the physical address of e_entry.

Debian's vmlinux links at virtual 0xffffffff81000000 with p_paddr 0x1000000 and e_entry already physical
(phys_startup_64); a virtual e_entry is converted through the segment that contains it. Only the file bytes of a
segment are emitted: its zero-filled tail (p_memsz > p_filesz, the bss) is left to guest RAM, which starts zeroed.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from kvmplat.agent.guest.image import Segment
from kvmplat.agent.linux.bootparams import refuse, synthetic_header
from kvmplat.agent.linux.kernel import Kernel
from kvmplat.agent.linux.layout import HIMEM

__all__ = ["ELF_MAGIC", "parse_elf"]

ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB = 2, 1
ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")


@dataclass(frozen=True)
class _Load:
    """One PT_LOAD program header's fields that matter here."""

    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


def _check_ident(image: bytes) -> tuple[int, int, int]:
    """Refuse anything but a little-endian 64-bit x86-64 executable; return (e_entry, e_phoff, e_phnum)."""
    if len(image) < EHDR.size:
        raise refuse(f"truncated ELF file: {len(image)} bytes cannot hold an ELF64 header")
    ident, e_type, machine, _, entry, phoff, _, _, _, phentsize, phnum, _, _, _ = EHDR.unpack_from(image)
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB:
        raise refuse("ELF file is not 64-bit little-endian: an x86-64 vmlinux is required")
    if machine != EM_X86_64:
        raise refuse(f"ELF file is for machine {machine}, not x86-64 (62)")
    if e_type != ET_EXEC:
        raise refuse(f"ELF file of type {e_type} is not an executable (ET_EXEC) vmlinux")
    if phentsize != PHDR.size or phnum == 0 or phoff + phnum * PHDR.size > len(image):
        raise refuse("ELF program headers are missing or lie outside the file")
    return int(entry), int(phoff), int(phnum)


def _loads(image: bytes, phoff: int, phnum: int) -> list[_Load]:
    """The PT_LOAD headers, each checked to lie inside the file and above 1 MiB."""
    out = []
    for i in range(phnum):
        p_type, _, offset, vaddr, paddr, filesz, memsz, _ = PHDR.unpack_from(image, phoff + i * PHDR.size)
        if p_type != PT_LOAD:
            continue
        if filesz > memsz or offset + filesz > len(image):
            raise refuse(f"ELF PT_LOAD #{i} is inconsistent (file size {filesz}, memory size {memsz}, offset {offset})")
        if paddr < HIMEM:
            raise refuse(f"ELF PT_LOAD #{i} at physical {paddr:#x} would overwrite the boot structures below 1 MiB")
        out.append(_Load(offset, vaddr, paddr, filesz, memsz))
    if not out:
        raise refuse("ELF file has no PT_LOAD segment")
    ordered = sorted(out, key=lambda seg: seg.paddr)
    for low, high in itertools.pairwise(ordered):
        if low.paddr + low.memsz > high.paddr:
            raise refuse(f"ELF PT_LOAD segments overlap at physical {high.paddr:#x}")
    return out


def _physical_entry(entry: int, loads: list[_Load]) -> int:
    """e_entry as a physical address: kept if already physical, else converted from virtual."""
    # physical first: Debian's per-CPU segment sits at virtual 0 and must not capture a physical entry
    for seg in loads:
        if seg.paddr <= entry < seg.paddr + seg.memsz:
            return entry
    for seg in loads:
        if seg.vaddr <= entry < seg.vaddr + seg.memsz:
            return entry - seg.vaddr + seg.paddr
    raise refuse(f"ELF entry point {entry:#x} lies in no PT_LOAD segment")


def parse_elf(image: bytes) -> Kernel:
    """Check an ELF vmlinux and describe its segments, extent and physical entry point."""
    entry, phoff, phnum = _check_ident(image)
    loads = _loads(image, phoff, phnum)
    start = min(seg.paddr for seg in loads)
    end = max(seg.paddr + seg.memsz for seg in loads)
    segments = tuple(Segment(s.paddr, image[s.offset : s.offset + s.filesz]) for s in loads if s.filesz)
    phys = _physical_entry(entry, loads)
    return Kernel(
        header=synthetic_header(init_size=min(end - start, 0xFFFFFFFF)),
        segments=segments,
        start=start,
        end=end,
        entry=phys,
        description=f"ELF vmlinux, {len(loads)} PT_LOAD segments in [{start:#x}, {end:#x}), entry {phys:#x}",
    )
