"""The CPUID table of an effective platform (pure), on the host fixtures."""

from __future__ import annotations

from hosts import HARDWARE, PVM, load_host
from kvmplat.agent.platform.model import CompatPolicy, PlatformRequest, Pv
from kvmplat.agent.platform.resolve import resolve
from kvmplat.agent.platform.x86 import cpuid_table, for_vcpu

HW = load_host(HARDWARE)


def leaf(rows: list[tuple[int, ...]], fn: int, idx: int = 0) -> tuple[int, ...]:
    return next(r for r in rows if r[0] == fn and r[1] == idx)


def table(**kw: object) -> list[tuple[int, ...]]:
    return cpuid_table(resolve(PlatformRequest(**kw), HW), HW)  # type: ignore[arg-type]


def test_bare_metal_has_no_hypervisor_bit_and_no_pv_leaves() -> None:
    rows = table()
    assert not leaf(rows, 1)[5] >> 31 & 1
    assert not any(0x40000000 <= r[0] < 0x50000000 for r in rows)


def test_pv_kvm_has_signature_and_only_supported_features() -> None:
    rows = table(pv=frozenset({Pv.KVM}))
    assert leaf(rows, 1)[5] >> 31 & 1
    assert leaf(rows, 0x40000000)[3:] == (0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D)
    assert leaf(rows, 0x40000001)[3] == HW.supported_kvm_features()


def test_hyperv_takes_0x40000000_and_kvm_moves_to_0x40000100() -> None:
    rows = table(pv=frozenset({Pv.KVM, Pv.HYPERV}))
    assert leaf(rows, 0x40000000)[4:] == (0x7263694D, 0x666F736F, 0x76482074)  # "Microsoft Hv"
    assert leaf(rows, 0x40000100)[3:] == (0x40000101, 0x4B4D564B, 0x564B4D56, 0x4D)
    assert leaf(rows, 0x40000101)[3] == HW.supported_kvm_features()


def test_level_v2_clears_v3_v4_features_and_their_xsave_state() -> None:
    rows = table(compat="x86-64-v2")
    ecx1, ebx7 = leaf(rows, 1)[5], leaf(rows, 7)[4]
    assert not ecx1 & (1 << 28 | 1 << 12 | 1 << 22 | 1 << 29) and ecx1 & (1 << 0 | 1 << 20)
    assert not ebx7 & (1 << 5 | 1 << 3 | 1 << 8 | 1 << 16)
    assert not leaf(rows, 0x80000001)[5] & 1 << 5
    xcr0 = leaf(rows, 0xD)[3]
    assert xcr0 & 0b11 and not xcr0 & (1 << 2 | 0b111 << 5)
    assert not any(r[0] == 0xD and r[1] in (2, 5, 6, 7) for r in rows)
    assert leaf(rows, 0xD)[5] == 576


def test_level_v3_keeps_avx_state_but_not_avx512() -> None:
    rows = table(compat="x86-64-v3")
    assert leaf(rows, 0xD)[3] & 1 << 2 and not leaf(rows, 0xD)[3] & 1 << 5
    assert leaf(rows, 0xD)[5] == 0x240 + 0x100


def test_bits_32_clears_long_mode() -> None:
    assert not leaf(table(bits=32), 0x80000001)[6] & 1 << 29


def test_host_level_keeps_the_supported_table_apart_from_pv() -> None:
    rows = table(pv=frozenset({Pv.KVM}))
    assert [r for r in rows if r[0] != 1] == sorted(r for r in HW.supported if r[0] != 1)


def test_for_vcpu_sets_apic_ids() -> None:
    rows = [
        (1, 0, 0, 0, 0x00020800, 0, 0),
        (0xB, 0, 1, 0, 0, 0, 0),
        (0xB, 1, 1, 0, 0, 0, 0),
        (0x8000001E, 0, 0, 0, 0, 0, 0),
    ]
    got = for_vcpu(rows, 3)
    assert got[0][4] == 0x03020800 and got[1][6] == got[2][6] == 3 and got[3][3] == 3


def test_best_effort_on_pvm_still_clears_what_it_cannot_hide() -> None:
    pvm = load_host(PVM)
    e = resolve(PlatformRequest(compat="x86-64-v1", policy=CompatPolicy.BEST_EFFORT), pvm)
    rows = cpuid_table(e, pvm)
    assert not leaf(rows, 1)[5] & (1 << 13 | 1 << 0)
    assert "sse3" in e.visible_above_level and "cx16" not in e.visible_above_level


def test_tsc_deadline_bit_only_with_the_capability_and_a_pv_clock() -> None:
    import dataclasses

    from kvmplat.agent.platform.x86 import TSC_DEADLINE_BIT, masked_table

    def deadline(host: object, **kw: object) -> bool:
        rows = cpuid_table(resolve(PlatformRequest(**kw), host), host)  # type: ignore[arg-type]
        return bool(leaf(rows, 1)[3 + 2] >> TSC_DEADLINE_BIT.bit & 1)

    unlisted = tuple(masked_table(list(HW.supported), [TSC_DEADLINE_BIT]))  # as real KVM's list: never there
    hw = dataclasses.replace(HW, supported=unlisted, tsc_deadline=True)
    assert deadline(hw, pv=frozenset({Pv.KVM}))
    assert deadline(hw, pv=frozenset({Pv.HYPERV}))
    assert not deadline(hw)  # BARE_METAL: no pv clock to give the TSC rate
    assert not deadline(dataclasses.replace(hw, tsc_deadline=False), pv=frozenset({Pv.KVM}))
