"""Architecture levels as data: the x86-64 psABI levels by CPUID bit, and the PowerPC logical PVRs.

Every x86 feature names its CPUID leaf, subleaf, register and bit, the level that introduces it and where the
position comes from (STYLE.md item 9). Feature names follow the Linux /proc/cpuinfo spelling (sse4_1, lahf_lm,
abm), which is also what the acceptance ground truth (acceptance/hostcpu.py) uses. The PowerPC levels (names and
ISA spellings to the logical PVRs that KVM_REG_PPC_ARCH_COMPAT takes) are ppc_levels.LEVELS, the one table.

`parse_compat` turns the caller's `compat` text into a `Compat`; it is pure and raises InvalidArgument naming
`spec.platform.compat` with every known name when the text is not a level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.platform.ppc_levels import LEVELS as PPC_LEVELS
from kvmplat.agent.platform.ppc_levels import level_by_name, level_by_raw

__all__ = [
    "PPC_LEVELS",
    "X86_DEPENDENTS",
    "X86_FEATURES",
    "X86_LEVELS",
    "X86_XSAVE_COMPONENTS",
    "Compat",
    "CpuidBit",
    "known_names",
    "parse_compat",
    "x86_level_number",
]

COMPAT_FIELD = "spec.platform.compat"

# psABI "x86-64 micro-architecture levels" (x86-64 psABI 1.0, section 3.1.1); positions from gcc 12 cpuid.h.
_PSABI = "x86-64 psABI 3.1.1; gcc cpuid.h"
X86_LEVELS: tuple[str, ...] = ("x86-64-v1", "x86-64-v2", "x86-64-v3", "x86-64-v4")


@dataclass(frozen=True)
class CpuidBit:
    """One CPUID feature bit: where it lives, its name, the level introducing it and the source of both."""

    leaf: int
    subleaf: int
    reg: Literal["eax", "ebx", "ecx", "edx"]
    bit: int
    name: str
    level: str = ""
    source: str = _PSABI


def _f(leaf: int, reg: Literal["eax", "ebx", "ecx", "edx"], bit: int, name: str, level: int) -> CpuidBit:
    return CpuidBit(leaf, 0, reg, bit, name, f"x86-64-v{level}")


X86_FEATURES: tuple[CpuidBit, ...] = (
    # v1: the AMD64 baseline (bit_FPU .. bit_SSE2 in leaf 1 EDX; SYSCALL and LM in 0x8000_0001 EDX).
    _f(1, "edx", 0, "fpu", 1),
    _f(1, "edx", 8, "cx8", 1),
    _f(1, "edx", 15, "cmov", 1),
    _f(1, "edx", 23, "mmx", 1),
    _f(1, "edx", 24, "fxsr", 1),
    _f(1, "edx", 25, "sse", 1),
    _f(1, "edx", 26, "sse2", 1),
    _f(0x80000001, "edx", 11, "syscall", 1),
    _f(0x80000001, "edx", 29, "lm", 1),
    # v2
    _f(1, "ecx", 0, "sse3", 2),
    _f(1, "ecx", 9, "ssse3", 2),
    _f(1, "ecx", 13, "cx16", 2),
    _f(1, "ecx", 19, "sse4_1", 2),
    _f(1, "ecx", 20, "sse4_2", 2),
    _f(1, "ecx", 23, "popcnt", 2),
    _f(0x80000001, "ecx", 0, "lahf_lm", 2),
    # v3 (OSXSAVE is CR4 state mirrored by KVM, not a table bit; XSAVE is not a level feature)
    _f(1, "ecx", 12, "fma", 3),
    _f(1, "ecx", 22, "movbe", 3),
    _f(1, "ecx", 28, "avx", 3),
    _f(1, "ecx", 29, "f16c", 3),
    _f(0x80000001, "ecx", 5, "abm", 3),
    _f(7, "ebx", 3, "bmi1", 3),
    _f(7, "ebx", 5, "avx2", 3),
    _f(7, "ebx", 8, "bmi2", 3),
    # v4
    _f(7, "ebx", 16, "avx512f", 4),
    _f(7, "ebx", 17, "avx512dq", 4),
    _f(7, "ebx", 28, "avx512cd", 4),
    _f(7, "ebx", 30, "avx512bw", 4),
    _f(7, "ebx", 31, "avx512vl", 4),
)

_SDM = "Intel SDM vol. 2A, CPUID leaf 7 / Linux arch/x86/include/asm/cpufeatures.h"


def _d(leaf: int, subleaf: int, reg: Literal["eax", "ebx", "ecx", "edx"], bit: int, name: str) -> CpuidBit:
    return CpuidBit(leaf, subleaf, reg, bit, name, "", _SDM)


# Bits that make no sense without a level feature: hidden together with it so a masked table stays coherent
# (a guest must not see VAES without AVX, or AVX512-VNNI without AVX512F). They are not level features.
X86_DEPENDENTS: dict[str, tuple[CpuidBit, ...]] = {
    "avx": (_d(7, 0, "ecx", 9, "vaes"), _d(7, 0, "ecx", 10, "vpclmulqdq"), _d(7, 1, "eax", 4, "avx_vnni")),
    "avx2": (_d(7, 1, "eax", 4, "avx_vnni"),),
    "avx512f": (
        _d(7, 0, "ebx", 21, "avx512ifma"),
        _d(7, 0, "ebx", 26, "avx512pf"),
        _d(7, 0, "ebx", 27, "avx512er"),
        _d(7, 0, "ecx", 1, "avx512vbmi"),
        _d(7, 0, "ecx", 6, "avx512_vbmi2"),
        _d(7, 0, "ecx", 11, "avx512_vnni"),
        _d(7, 0, "ecx", 12, "avx512_bitalg"),
        _d(7, 0, "ecx", 14, "avx512_vpopcntdq"),
        _d(7, 0, "edx", 2, "avx512_4vnniw"),
        _d(7, 0, "edx", 3, "avx512_4fmaps"),
        _d(7, 0, "edx", 8, "avx512_vp2intersect"),
        _d(7, 0, "edx", 23, "avx512_fp16"),
        _d(7, 1, "eax", 5, "avx512_bf16"),
    ),
}

# XCR0 state components a guest may enable only with the feature (CPUID 0xD.0 EAX bits; SDM vol. 1 13.1).
X86_XSAVE_COMPONENTS: dict[str, tuple[int, ...]] = {"avx": (2,), "avx512f": (5, 6, 7)}


@dataclass(frozen=True)
class Compat:
    """A parsed compat: arch family, canonical name and raw value (x86 level number, or PowerPC PVR)."""

    arch: Literal["x86", "ppc"]
    name: str
    raw: int

    @property
    def logical(self) -> bool:
        """True for a named level (x86 level, PowerPC logical PVR), False for a raw processor PVR."""
        return self.arch == "x86" or level_by_raw(self.raw) is not None


_HEX = re.compile(r"0x([0-9a-f]{1,8})")


def known_names() -> list[str]:
    """Every level name parse_compat accepts, x86 first, then PowerPC names and ISA spellings."""
    return [*X86_LEVELS, *(lv.name for lv in PPC_LEVELS), *(lv.isa for lv in PPC_LEVELS)]


def x86_level_number(name: str) -> int:
    """1..4 for x86-64-v1..v4 (ValueError otherwise)."""
    return X86_LEVELS.index(name) + 1


def parse_compat(text: str) -> Compat:
    """The Compat named by `text` (case-insensitive name or 0x-prefixed raw PVR); InvalidArgument otherwise."""
    key = text.strip().lower()
    if key in X86_LEVELS:
        return Compat("x86", key, x86_level_number(key))
    if (lv := level_by_name(key)) is not None:
        return Compat("ppc", lv.name, lv.logical_pvr)
    m = _HEX.fullmatch(key)
    if m and int(m[1], 16):
        pvr = int(m[1], 16)
        named = level_by_raw(pvr)
        return Compat("ppc", named.name if named else f"{pvr:#010x}", pvr)
    raise InvalidArgument.field(
        COMPAT_FIELD, f"unknown level {text!r} (known: {', '.join(known_names())}, or a raw PVR such as 0x004e1202)"
    )
