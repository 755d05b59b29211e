"""PowerPC architecture levels and PVR families, as data with their sources.

Levels are PAPR logical PVRs (arch/powerpc/include/asm/reg.h PVR_ARCH_*; KVM_ABI.md §2.4), the values
KVM_REG_PPC_ARCH_COMPAT takes. Families map a real PVR's version (upper 16 bits) to a core, its register width and
the level it implements (asm/reg.h PVR_*; QEMU target/ppc/cpu-models.h). This is kvmplat's one PowerPC level table:
levels.parse_compat (any host) and parse_ppc_compat (PowerPC hosts) both read it; names and values follow issue 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmplat.agent.errors import InvalidArgument

__all__ = [
    "BOOK3S32_DEFAULT_PVR",
    "LEVELS",
    "Level",
    "PvrFamily",
    "family_of",
    "level_by_name",
    "level_by_raw",
    "parse_ppc_compat",
]


@dataclass(frozen=True)
class Level:
    """An ISA level: canonical name, spellings, logical PVR and rank (order of inclusion)."""

    name: str
    isa: str
    logical_pvr: int
    rank: int


LEVELS: tuple[Level, ...] = (
    Level("power6", "isa-2.05", 0x0F000002, 205),
    Level("power7", "isa-2.06", 0x0F000003, 206),
    Level("power7+", "isa-2.06+", 0x0F100003, 207),
    Level("power8", "isa-2.07", 0x0F000004, 208),
    Level("power9", "isa-3.0", 0x0F000005, 300),
    Level("power10", "isa-3.1", 0x0F000006, 310),
)
# Also written with two fractional digits (Power ISA 3.00, 3.10).
_ALIASES = {"isa-3.00": "power9", "isa-3.10": "power10"}


@dataclass(frozen=True)
class PvrFamily:
    """Cores sharing a PVR version: name, Book3S or BookE, register width, and the level they implement."""

    name: str
    kind: str
    bits: int
    level: str = ""


# PVR version (upper 16 bits) → family. Sources: asm/reg.h (PVR_POWER6 0x3e ... PVR_POWER10 0x80, PVR_970*,
# PVR_7400/7410/7450, PVR_8540/8560 e500, PVR_E500MC 0x8023, PVR_E5500 0x8024, PVR_E6500 0x8040).
_FAMILIES: dict[int, PvrFamily] = {
    0x0008: PvrFamily("ppc750", "book3s", 32),
    0x000C: PvrFamily("ppc7400", "book3s", 32),
    0x800C: PvrFamily("ppc7410", "book3s", 32),
    0x8000: PvrFamily("ppc7450", "book3s", 32),
    0x8002: PvrFamily("ppc7457", "book3s", 32),
    0x8003: PvrFamily("ppc7447a", "book3s", 32),
    0x0039: PvrFamily("ppc970", "book3s", 64),
    0x003C: PvrFamily("ppc970fx", "book3s", 64),
    0x0044: PvrFamily("ppc970mp", "book3s", 64),
    0x003E: PvrFamily("power6", "book3s", 64, "power6"),
    0x003F: PvrFamily("power7", "book3s", 64, "power7"),
    0x004A: PvrFamily("power7+", "book3s", 64, "power7+"),
    0x004B: PvrFamily("power8e", "book3s", 64, "power8"),
    0x004C: PvrFamily("power8nvl", "book3s", 64, "power8"),
    0x004D: PvrFamily("power8", "book3s", 64, "power8"),
    0x004E: PvrFamily("power9", "book3s", 64, "power9"),
    0x0080: PvrFamily("power10", "book3s", 64, "power10"),
    0x8020: PvrFamily("e500v1", "booke", 32),
    0x8021: PvrFamily("e500v2", "booke", 32),
    0x8023: PvrFamily("e500mc", "booke", 32),
    0x8024: PvrFamily("e5500", "booke", 64),
    0x8040: PvrFamily("e6500", "booke", 64),
}

# QEMU's mac99 default core (PowerPC 7400 v2.9): the PVR a 32-bit Book3S guest gets when no PVR is named.
BOOK3S32_DEFAULT_PVR = 0x000C0209


def family_of(pvr: int) -> PvrFamily | None:
    """The core family of a real PVR, or None when kvmplat does not know it."""
    return _FAMILIES.get(pvr >> 16)


def level_by_name(name: str) -> Level | None:
    """The level named `name` (canonical or ISA spelling, case-insensitive)."""
    key = _ALIASES.get(name.lower(), name.lower())
    return next((lv for lv in LEVELS if key in (lv.name, lv.isa)), None)


def level_by_raw(value: int) -> Level | None:
    """The level whose logical PVR is `value`."""
    return next((lv for lv in LEVELS if lv.logical_pvr == value), None)


def parse_ppc_compat(text: str) -> Level | int | None:
    """compat → a Level, a raw PVR (int, "0x" hex), or None when empty; unknown names are InvalidArgument."""
    text = text.strip()
    if not text:
        return None
    if text.lower().startswith("0x"):
        try:
            value = int(text, 16)
        except ValueError:
            raise InvalidArgument.field("platform.compat", f"{text!r} is not a hexadecimal PVR") from None
        if not 0 < value <= 0xFFFFFFFF:
            raise InvalidArgument.field("platform.compat", f"PVR {text} is outside 32 bits")
        return level_by_raw(value) or value
    level = level_by_name(text)
    if level is None:
        known = ", ".join(lv.name for lv in LEVELS) + ", " + ", ".join(lv.isa for lv in LEVELS)
        raise InvalidArgument.field(
            "platform.compat", f"unknown PowerPC level {text!r}; known: {known}, or a raw PVR as 0x########"
        )
    return level
