"""The shared level table and parse_compat (pure)."""

from __future__ import annotations

import pytest
from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.platform.levels import PPC_LEVELS, X86_FEATURES, X86_LEVELS, Compat, known_names, parse_compat


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("x86-64-v2", Compat("x86", "x86-64-v2", 2)),
        ("X86-64-V4", Compat("x86", "x86-64-v4", 4)),
        (" power9 ", Compat("ppc", "power9", 0x0F000005)),
        ("POWER7+", Compat("ppc", "power7+", 0x0F100003)),
        ("isa-2.06+", Compat("ppc", "power7+", 0x0F100003)),
        ("isa-2.05", Compat("ppc", "power6", 0x0F000002)),
        ("ISA-3.1", Compat("ppc", "power10", 0x0F000006)),
        ("isa-3.00", Compat("ppc", "power9", 0x0F000005)),
        ("0x0f000004", Compat("ppc", "power8", 0x0F000004)),
        ("0x004E1202", Compat("ppc", "0x004e1202", 0x004E1202)),
    ],
)
def test_parse_compat_names_isa_spellings_and_raw_pvrs(text: str, want: Compat) -> None:
    assert parse_compat(text) == want


def test_raw_pvr_is_not_logical_but_named_levels_are() -> None:
    assert not parse_compat("0x004e1202").logical
    assert parse_compat("0x0f000005").logical and parse_compat("x86-64-v1").logical


@pytest.mark.parametrize("text", ["", "x86-64-v5", "power11", "0x", "0x0", "0x123456789", "pentium", "v2"])
def test_unknown_compat_is_invalid_argument_listing_known_names(text: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_compat(text)
    assert e.value.violations[0][0] == "spec.platform.compat"
    assert all(name in str(e.value) for name in known_names())


def test_level_table_positions_are_unique_and_levels_known() -> None:
    positions = [(b.leaf, b.subleaf, b.reg, b.bit) for b in X86_FEATURES]
    assert len(set(positions)) == len(positions)
    assert len({b.name for b in X86_FEATURES}) == len(X86_FEATURES)
    assert {b.level for b in X86_FEATURES} == set(X86_LEVELS)
    assert all(b.source for b in X86_FEATURES)


def test_ppc_logical_pvrs_follow_the_issue() -> None:
    assert [lv.logical_pvr for lv in PPC_LEVELS] == [
        0x0F000002,
        0x0F000003,
        0x0F100003,
        0x0F000004,
        0x0F000005,
        0x0F000006,
    ]
    assert [lv.name for lv in PPC_LEVELS] == ["power6", "power7", "power7+", "power8", "power9", "power10"]
