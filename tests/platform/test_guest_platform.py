"""Checked from inside the guest (issue 3 item 5): every abi × pv × level × policy on this host is either admitted and
the probe payload's CPUID lines match the effective platform, or refused naming a culprit the guest confirms."""

from __future__ import annotations

import itertools
import platform
import re
from collections.abc import Callable
from typing import Any

import pytest
from conftest import CpuidLines, parse_cpuid_lines
from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.levels import X86_FEATURES, X86_LEVELS, CpuidBit, x86_level_number
from kvmplat.agent.platform.model import Abi, CompatPolicy, EffectivePlatform, PlatformRequest, Pv
from kvmplat.agent.platform.resolve import level_culprits, resolve
from kvmplat.agent.platform.x86 import cpuid_table
from kvmplat.agent.platform.x86host import X86Host

pytestmark = pytest.mark.kvm
REG = {"eax": 0, "ebx": 1, "ecx": 2, "edx": 3}
KVM_SIGNATURE = (0x4B4D564B, 0x564B4D56, 0x4D)
ABIS = [None, Abi.BARE_METAL, Abi.SPAPR, Abi.BOOKE]
PVS = [frozenset(), frozenset({Pv.KVM}), frozenset({Pv.HYPERV}), frozenset({Pv.KVM, Pv.HYPERV})]
COMPATS = ["", *X86_LEVELS]
COMBOS = list(itertools.product(ABIS, PVS, COMPATS, CompatPolicy))
IDS = [
    f"{a.name if a else 'native'}-{'+'.join(sorted(p.name for p in v)) or 'nopv'}-{c or 'host'}-{pol.name}"
    for a, v, c, pol in COMBOS
]


def sees(lines: CpuidLines, b: CpuidBit) -> bool:
    """Whether the guest's CPUID line shows feature bit `b`."""
    regs = lines.get((b.leaf, b.subleaf))
    assert regs is not None, f"probe printed no line for leaf {b.leaf:#x}.{b.subleaf}"
    return bool(regs[REG[b.reg]] >> b.bit & 1)


def run(probe_guest: Callable[..., str], rows: list[tuple[int, ...]]) -> CpuidLines:
    """The probe's CPUID lines under `rows`."""
    out = probe_guest(rows)
    assert "kvmplat-probe cpu 0 of 1" in out, out
    return parse_cpuid_lines(out)


def check_admitted(e: EffectivePlatform, host: X86Host, lines: CpuidLines) -> None:
    """The guest's CPUID matches the effective platform: hypervisor bit, pv leaves, level features, visible list."""
    hv = bool(lines[(1, 0)][2] >> 31 & 1)
    sig = lines[(0x40000000, 0)][1:]
    if e.pv:
        assert hv, "pv guest lacks the hypervisor bit"
    elif host.hv_bit_hideable:
        assert not hv, "bare-metal guest sees the hypervisor bit"
    if Pv.KVM in e.pv:
        assert sig == KVM_SIGNATURE and lines[(0x40000001, 0)][0] == host.supported_kvm_features()
    elif host.kvm_leaves_hideable:
        assert sig != KVM_SIGNATURE, "guest without pv KVM sees the KVM signature"
    # what the platform means, from the level table itself (not from x86.hidden_features, which the table uses):
    # a level hides what later levels introduce, and a 32-bit guest does not see long mode
    hidden = {b.name for b in X86_FEATURES if e.compat and x86_level_number(b.level) > x86_level_number(e.compat)}
    hidden |= {"lm"} if e.bits == 32 else set()
    visible_above = []
    for b in X86_FEATURES:
        truth = host.feature(b.name)
        want = truth.seen and (b.name not in hidden or not truth.hideable)
        assert sees(lines, b) == want, f"{b.name}: guest sees {sees(lines, b)}, effective platform implies {want}"
        if e.compat and x86_level_number(b.level) > e.compat_raw and sees(lines, b):
            visible_above.append(b.name)
    assert visible_above == list(e.visible_above_level)


def named(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def check_compat_refusal(err: PlatformRefused, host: X86Host, level: str, probe_guest: Callable[..., str]) -> None:
    """The refusal names every culprit; the guest confirms missing ones unseen, unhideable ones seen though cleared."""
    missing, unhideable = level_culprits(host, level)
    assert missing or unhideable
    text = str(err)
    assert all(named(text, f.name) for f in missing + unhideable), text
    eff = EffectivePlatform(
        Abi.BARE_METAL, (), level, x86_level_number(level), CompatPolicy.BEST_EFFORT, 64, host.accel
    )
    full = run(probe_guest, list(host.supported))
    masked = run(probe_guest, cpuid_table(eff, host))
    by_name = {b.name: b for b in X86_FEATURES}
    assert not any(sees(full, by_name[f.name]) for f in missing)
    assert all(sees(masked, by_name[f.name]) for f in unhideable)


@pytest.mark.parametrize(("abi", "pv", "compat", "policy"), COMBOS, ids=IDS)
def test_platform_in_guest_or_refused_with_culprit(
    abi: Abi | None, pv: frozenset[Pv], compat: str, policy: CompatPolicy, host_truth: Any, probe_guest: Any
) -> None:
    host: X86Host = host_truth
    req = PlatformRequest(abi=abi, pv=pv, compat=compat, policy=policy)
    try:
        e = resolve(req, host)
    except PlatformRefused as err:
        if err.field == "abi" and abi in (Abi.SPAPR, Abi.BOOKE):
            assert platform.machine() == "x86_64" and "x86_64" in str(err)
        elif err.field == "pv":
            assert Pv.HYPERV in pv and not host.hyperv and "Hyper-V" in str(err)
        else:
            assert err.field == "compat", str(err)
            check_compat_refusal(err, host, compat, probe_guest)
        return
    assert abi in (None, Abi.BARE_METAL) and (Pv.HYPERV not in pv or host.hyperv)
    check_admitted(e, host, run(probe_guest, cpuid_table(e, host)))


@pytest.mark.parametrize("pv", [frozenset(), frozenset({Pv.KVM})], ids=["nopv", "KVM"])
def test_bits_32_hides_long_mode_in_guest(pv: frozenset[Pv], host_truth: Any, probe_guest: Any) -> None:
    host: X86Host = host_truth
    e = resolve(PlatformRequest(pv=pv, bits=32), host)
    lines = run(probe_guest, cpuid_table(e, host))
    lm = next(b for b in X86_FEATURES if b.name == "lm")
    assert sees(lines, lm) == (not host.feature("lm").hideable)
    check_admitted(e, host, lines)


def test_two_vcpus_each_run_the_probe(host_truth: Any, probe_guest: Any) -> None:
    e = resolve(PlatformRequest(), host_truth)
    out = probe_guest(cpuid_table(e, host_truth), vcpus=2)
    assert "kvmplat-probe cpu 0 of 2" in out and "kvmplat-probe cpu 1 of 2" in out


def test_invalid_requests_never_reach_a_guest(host_truth: Any) -> None:
    with pytest.raises(InvalidArgument):
        resolve(PlatformRequest(compat="x86-64-v2", bits=32), host_truth)
