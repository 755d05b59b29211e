"""An agent's level ceiling (`kvmplat-agent --max-level`, issue 13 item 4): the agent offers nothing above it, the way
a cluster keeps one baseline across CPU generations (VMware EVC). Pure.

- compat empty ("the host's own level") means the ceiling: the guest is given the ceiling level, under the request's
  policy (STRICT refuses where the host cannot hide what is above it, BEST_EFFORT names it).
- a level above the ceiling is refused under STRICT and BEST_EFFORT alike, naming the features (x86) or ISA levels
  (PowerPC) above the ceiling; a level at or below it resolves as without a ceiling.
- PowerPC: the ceiling is a POWER level (power8, isa-2.07); a raw PVR counts at its core's level, and one kvmplat
  has no level for is refused under a ceiling. 32-bit and BookE guests have no POWER level: a ceiling does not apply.
"""

from __future__ import annotations

import dataclasses

from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.levels import X86_FEATURES, X86_LEVELS, parse_compat, x86_level_number
from kvmplat.agent.platform.model import Abi, PlatformRequest

__all__ = ["above_ceiling", "ceiling_ppc", "ceiling_x86", "parse_max_level"]


def parse_max_level(text: str, powerpc: bool) -> str:
    """The canonical ceiling for `--max-level TEXT` on an x86 (or PowerPC) host; ValueError naming what is accepted."""
    try:
        compat = parse_compat(text)
    except InvalidArgument:
        raise ValueError(f"--max-level {text!r} is not a level ({_accepted(powerpc)})") from None
    if (compat.arch == "ppc") != powerpc or not compat.logical:
        raise ValueError(f"--max-level {text!r} is not a level of this host ({_accepted(powerpc)})")
    return compat.name


def _accepted(powerpc: bool) -> str:
    return "power6 .. power10 or isa-2.05 .. isa-3.1" if powerpc else ", ".join(X86_LEVELS)


def above_ceiling(level: str, ceiling: str) -> list[str]:
    """The x86 features `level` has and the ceiling does not ([] at or below the ceiling, or without one)."""
    if not ceiling:
        return []
    top, want = x86_level_number(ceiling), x86_level_number(level)
    return [f.name for f in X86_FEATURES if top < x86_level_number(f.level) <= want]


def _grouped(names: list[str]) -> str:
    """'sse3, ssse3 (x86-64-v2), fma (x86-64-v3)': names grouped by the level that introduces them."""
    level = {f.name: f.level for f in X86_FEATURES}
    groups = [(lv, [n for n in names if level[n] == lv]) for lv in X86_LEVELS]
    return ", ".join(f"{', '.join(ns)} ({lv})" for lv, ns in groups if ns)


def ceiling_x86(request: PlatformRequest, ceiling: str) -> tuple[PlatformRequest, bool]:
    """(`request` under the ceiling, True when its compat is the ceiling standing in for "the host's own")."""
    if not ceiling:
        return request, False
    if not request.compat.strip():
        return dataclasses.replace(request, compat=ceiling), True
    compat = parse_compat(request.compat)
    if compat.arch != "x86":
        return request, False  # a PowerPC level on x86 is refused by resolution, naming the arch
    above = above_ceiling(compat.name, ceiling)
    if above:
        raise PlatformRefused(
            "compat",
            f"{compat.name} ({request.policy.name})",
            f"above this agent's ceiling {ceiling} (kvmplat-agent --max-level): {_grouped(above)} are above it",
            f"{', '.join(X86_LEVELS[: x86_level_number(ceiling)])} (nothing above the ceiling {ceiling})",
        )
    return request, False


def ceiling_ppc(request: PlatformRequest, ceiling: str, abi: Abi) -> PlatformRequest:
    """`request` (arch and bits settled, of `abi`) under a POWER ceiling; PlatformRefused above it."""
    from kvmplat.agent.platform.ppc_levels import LEVELS, family_of, level_by_name, parse_ppc_compat

    top = level_by_name(ceiling) if ceiling else None
    if top is None or request.bits != 64 or abi is Abi.BOOKE:
        return request
    if not request.compat.strip():
        return dataclasses.replace(request, compat=top.name)
    asked = parse_ppc_compat(request.compat)
    if isinstance(asked, int):
        fam = family_of(asked)
        level = level_by_name(fam.level) if fam is not None and fam.level else None
        if level is None:
            reason = f"kvmplat knows no ISA level for PVR 0x{asked:08x}, so it cannot show it is within the ceiling"
            raise PlatformRefused("compat", f"0x{asked:08x}", reason, f"{top.name} and below")
    else:
        level = asked
    if level is not None and level.rank > top.rank:
        above = [f"{lv.name} ({lv.isa})" for lv in LEVELS if top.rank < lv.rank <= level.rank]
        raise PlatformRefused(
            "compat",
            f"{request.compat.strip()} ({request.policy.name})",
            f"above this agent's ceiling {top.name} (kvmplat-agent --max-level): {', '.join(above)} are above it",
            f"{top.name} and below",
        )
    return request
