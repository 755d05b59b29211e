"""libvirt's scaled integers (`<memory unit='GiB'>4</memory>`), parsed exactly as libvirt's virScaleInteger does.

Units are case-insensitive: `b`/`byte`/`bytes` are bytes; a bare letter or letter + `iB` is a power of 1024
(`k`, `KiB`, `M`, `MiB`, ... `E`, `EiB`); letter + `B` is a power of 1000 (`KB`, `MB`, ... `EB`). Memory values are
then rounded up to whole KiB, as libvirt stores them. No unit means KiB for memory elements.
"""

from __future__ import annotations

import re

__all__ = ["MAX_MEMORY_BYTES", "UnitError", "memory_kib", "scale_of"]

# libvirt caps memory at LLONG_MAX bytes (virMemoryMaxValue); anything above is "too large", never wrapped.
MAX_MEMORY_BYTES = 2**63 - 1
_PREFIXES = "kmgtpe"
_DIGITS = re.compile(r"[0-9]+")


class UnitError(ValueError):
    """A unit libvirt does not know, a value that is not a plain decimal integer, or one that overflows."""


def scale_of(unit: str) -> int:
    """Bytes per `unit`, by libvirt's rules (case-insensitive; `KB` is 1000, `K`/`KiB` 1024)."""
    u = unit.strip().lower()
    if u in ("b", "byte", "bytes"):
        return 1
    if not u or u[0] not in _PREFIXES:
        raise UnitError(f"unknown unit {unit!r}")
    if len(u) == 1 or u[1:] == "ib":
        base = 1024
    elif u[1:] == "b":
        base = 1000
    else:
        raise UnitError(f"unknown unit {unit!r}")
    return int(base ** (_PREFIXES.index(u[0]) + 1))


def memory_kib(value: str, unit: str | None) -> int:
    """A memory element's size in KiB, rounded up as libvirt does; `unit` None means KiB."""
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        raise UnitError(f"{value.strip()!r} is not a non-negative decimal integer")
    scale = 1024 if unit is None else scale_of(unit)
    # Bound the digit count first: int() of a megabyte of digits is slow and refused by Python anyway.
    number = int(text) if len(text) <= 40 else MAX_MEMORY_BYTES + 1
    if number * scale > MAX_MEMORY_BYTES:
        raise UnitError(f"{text} {unit or 'KiB'} is too large (at most {MAX_MEMORY_BYTES} bytes)")
    return -(-number * scale // 1024)
