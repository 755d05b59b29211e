"""What a crashed guest was doing: the bytes at its rip (from KVM's emulation-failure report, else read through the
guest's own page tables) and a plain-language name for well-known instructions an emulator may lack.

Pure functions of register values and a `read(gpa, length)` callable, so tests drive them with synthetic memory.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "INSN_MAX",
    "CpuView",
    "describe_instruction",
    "explain_emulation_failure",
    "instruction_at",
    "kvm_reported_bytes",
    "translate",
]

INSN_MAX = 15  # the longest x86 instruction
EMULATION_FLAG_INSTRUCTION_BYTES = 1  # KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
CR0_PG, CR4_PSE, CR4_PAE, CR4_LA57, EFER_LMA = 1 << 31, 1 << 4, 1 << 5, 1 << 12, 1 << 10
_P, _PS = 0x1, 0x80
_ADDR_MASK = 0x000F_FFFF_FFFF_F000
_PAGE = 4096

Read = Callable[[int, int], bytes]


@dataclass(frozen=True)
class CpuView:
    """The registers that decide how a virtual address becomes a physical one."""

    rip: int
    cs_base: int
    cr0: int
    cr3: int
    cr4: int
    efer: int


def kvm_reported_bytes(data: tuple[int, ...]) -> bytes:
    """The instruction bytes KVM put in an emulation-failure exit (kvm_run.emulation_failure), or b"" if none."""
    if len(data) < 2 or not data[0] & EMULATION_FLAG_INSTRUCTION_BYTES:
        return b""
    raw = struct.pack(f"<{len(data) - 1}Q", *data[1:])  # insn_size (u8), then insn_bytes[15]
    return raw[1 : 1 + min(raw[0], INSN_MAX)]


def _levels(cpu: CpuView) -> tuple[int, int, int] | None:
    """(levels, entry size, bits per level) of the guest's paging mode; None when paging is off."""
    if not cpu.cr0 & CR0_PG:
        return None
    if cpu.efer & EFER_LMA:
        return (5 if cpu.cr4 & CR4_LA57 else 4), 8, 9
    if cpu.cr4 & CR4_PAE:
        return 3, 8, 9
    return 2, 4, 10


def translate(read: Read, cpu: CpuView, linear: int) -> int | None:
    """The physical address of `linear` under the guest's page tables (None when not mapped)."""
    mode = _levels(cpu)
    if mode is None:
        return linear & 0xFFFF_FFFF
    levels, size, bits = mode
    table = cpu.cr3 & (~0x1F if levels == 3 else _ADDR_MASK)
    shift = 12 + bits * (levels - 1) if levels != 3 else 30
    for level in range(levels, 0, -1):
        index = (linear >> shift) & ((1 << (2 if levels == 3 and level == 3 else bits)) - 1)
        entry = int.from_bytes(read(table + index * size, size), "little")
        if not entry & _P:
            return None
        large = level > 1 and entry & _PS and (size == 8 or cpu.cr4 & CR4_PSE)
        if level == 1 or large:
            span = 1 << shift
            base = entry & _ADDR_MASK & ~(span - 1) if size == 8 else entry & ~(span - 1) & 0xFFFF_FFFF
            return base | (linear & (span - 1))
        table = entry & _ADDR_MASK
        shift -= bits
    return None


def instruction_at(read: Read, cpu: CpuView, length: int = INSN_MAX) -> bytes:
    """Up to `length` bytes at cs:rip, page by page (stops at an unmapped or unreadable page)."""
    linear = cpu.rip if cpu.efer & EFER_LMA else (cpu.cs_base + cpu.rip) & 0xFFFF_FFFF
    out = b""
    while len(out) < length:
        try:
            phys = translate(read, cpu, linear + len(out))
            if phys is None:
                break
            out += read(phys, min(length - len(out), _PAGE - (phys % _PAGE)))
        except ValueError:  # a page table or the code lies outside guest memory
            break
    return out


# Instructions a stock kernel runs that KVM's emulator (all a kvm_pvm host has for a non-PVM guest) does not know.
_KNOWN: tuple[tuple[bytes, int, str], ...] = (
    (b"\x0f\xc7", 1, "cmpxchg16b/cmpxchg8b (atomic compare-and-exchange of 16 bytes)"),
    (b"\x0f\xae", 5, "xrstor (restore extended FPU/SSE/AVX state)"),
    (b"\x0f\xae", 4, "xsave (save extended FPU/SSE/AVX state)"),
    (b"\x0f\xc7", 4, "xsavec (save extended FPU state, compacted)"),
)


def _strip_prefixes(insn: bytes) -> bytes:
    """The instruction without legacy and REX prefixes."""
    i = 0
    while i < len(insn) and (insn[i] in b"\x66\x67\xf0\xf2\xf3\x2e\x3e\x26\x64\x65\x36" or 0x40 <= insn[i] <= 0x4F):
        i += 1
    return insn[i:]


def describe_instruction(insn: bytes) -> str:
    """A plain-language name for the instruction, or "" when it is not one kvmplat knows to name."""
    core = _strip_prefixes(insn)
    if core[:1] == b"\xcc":
        return "int3 (a breakpoint, as the kernel's runtime code patching uses)"
    for opcode, reg, name in _KNOWN:
        if core.startswith(opcode) and len(core) > len(opcode) and (core[len(opcode)] >> 3) & 7 == reg:
            return name
    return ""


def explain_emulation_failure(detail: str, insn: bytes, rip: int) -> str:
    """The crash reason of an emulation failure: what failed, the bytes at rip, and why that stops the guest."""
    shown = insn.hex(" ") if insn else "unreadable"
    name = describe_instruction(insn)
    what = f"the instruction at rip {rip:#x} ({shown}){f' is {name}' if name else ''}"
    return (
        f"{detail}: {what}; KVM's instruction emulator does not implement it (on a kvm_pvm host every instruction "
        "of a guest not built for PVM goes through that emulator, so a stock kernel stops here; hardware KVM runs it)"
    )
