"""x86 platform application: the CPUID table (KVM_SET_CPUID2 rows) that gives a guest its effective platform.

Pure: the table is KVM's supported list with the level features above the effective level (and the bits that
depend on them) cleared, leaf 0xD made consistent with what remains, the hypervisor bit set only with a pv
interface, the TSC-deadline bit set with one where KVM emulates that timer, and the 0x4000_0000 leaves present
only for the pv interfaces asked (KVM_ABI.md section 7). Bits the host cannot hide are still cleared here;
resolution has already refused or named them.
"""

from __future__ import annotations

from kvmplat.agent.platform.levels import (
    X86_DEPENDENTS,
    X86_FEATURES,
    X86_XSAVE_COMPONENTS,
    CpuidBit,
    x86_level_number,
)
from kvmplat.agent.platform.model import EffectivePlatform, Pv
from kvmplat.agent.platform.x86host import Row, X86Host

__all__ = [
    "HV_BIT",
    "LM_BIT",
    "TSC_DEADLINE_BIT",
    "cpuid_table",
    "for_vcpu",
    "hidden_features",
    "masked_table",
    "with_bit",
]

REG_INDEX = {"eax": 0, "ebx": 1, "ecx": 2, "edx": 3}
HV_BIT = CpuidBit(1, 0, "ecx", 31, "hypervisor", "", "Intel SDM vol. 2A table 3-10 (reserved for hypervisors)")
# KVM emulates the LAPIC's TSC-deadline mode (KVM_CAP_TSC_DEADLINE_TIMER) but never lists its bit: the VMM sets it, as
# QEMU and Firecracker do. Without it Linux must calibrate the LAPIC timer against the PIT, fails that under nested
# virtualisation ("APIC timer disabled due to verification failure") and keeps the PIT as its tick: thousands of
# exits per boot that QEMU's guest never makes (README "x86 lab"). Only with a pv interface, whose clock tells the guest
# the TSC rate (kvmclock, Hyper-V's frequency MSRs): without one the rate comes from PIT calibration, and in the lab
# a BARE_METAL guest with the bit reset silently before /init where the PIT tick it had before boots.
TSC_DEADLINE_BIT = CpuidBit(1, 0, "ecx", 24, "tsc_deadline_timer", "", "Intel SDM vol. 2A table 3-10")
LM_BIT = next(b for b in X86_FEATURES if b.name == "lm")
PV_BASE, PV_END, PV_KVM_MOVED = 0x40000000, 0x50000000, 0x40000100
HYPERV_VENDOR = (0x7263694D, 0x666F736F, 0x76482074)  # "Microsoft Hv": what Linux and Windows check (TLFS 2.4)
FLAG_SIGNIFICANT_INDEX = 1
XSAVE_LEGACY_SIZE = 576  # legacy FXSAVE area (512) + XSAVE header (64)


def hidden_features(effective: EffectivePlatform) -> list[CpuidBit]:
    """The level features the table clears for `effective`: those above its level, and lm for 32-bit guests."""
    hide: list[CpuidBit] = []
    if effective.compat.startswith("x86-64-v"):
        level = x86_level_number(effective.compat)
        hide += [b for b in X86_FEATURES if x86_level_number(b.level) > level]
    if effective.bits == 32:
        hide.append(LM_BIT)
    return hide


def masked_table(rows: list[Row], bits: list[CpuidBit]) -> list[Row]:
    """`rows` with `bits` cleared (matching subleaf, or any subleaf where the subleaf is not significant)."""
    out = []
    for fn, idx, flags, *regs in rows:
        for b in bits:
            if b.leaf == fn and (b.subleaf == idx or not flags & FLAG_SIGNIFICANT_INDEX):
                regs[REG_INDEX[b.reg]] &= ~(1 << b.bit)
        out.append((fn, idx, flags, *regs))
    return out


def _xsave_consistent(rows: list[Row], hidden: set[str]) -> list[Row]:
    """Leaf 0xD without the XCR0 components of hidden features, so a guest cannot enable their state."""
    drop = {c for name, comps in X86_XSAVE_COMPONENTS.items() if name in hidden for c in comps}
    if not drop:
        return rows
    kept = [r for r in rows if not (r[0] == 0xD and r[1] in drop)]
    size = max([XSAVE_LEGACY_SIZE] + [r[4] + r[3] for r in kept if r[0] == 0xD and r[1] >= 2])
    out: list[Row] = []
    for fn, idx, flags, a, b, c, d in kept:
        if fn == 0xD and idx == 0:
            a &= ~sum(1 << comp for comp in drop)
            b, c = min(b, size), size
        out.append((fn, idx, flags, a, b, c, d))
    return out


def with_bit(rows: list[Row], bit: CpuidBit, on: bool) -> list[Row]:
    """`rows` with `bit` set (`on`) or cleared (matching subleaf, or any where the subleaf is not significant)."""
    out = []
    for fn, idx, flags, *regs in rows:
        if fn == bit.leaf and (idx == bit.subleaf or not flags & FLAG_SIGNIFICANT_INDEX):
            regs[REG_INDEX[bit.reg]] = regs[REG_INDEX[bit.reg]] & ~(1 << bit.bit) | (int(on) << bit.bit)
        out.append((fn, idx, flags, *regs))
    return out


def _pv_leaves(effective: EffectivePlatform, host: X86Host) -> list[Row]:
    """Hyper-V leaves at 0x4000_0000 and KVM's (moved to 0x4000_0100 beside Hyper-V) as the pv set asks."""
    rows: list[Row] = []
    if Pv.HYPERV in effective.pv:
        for fn, idx, flags, a, b, c, d in host.hv_supported:
            if fn == PV_BASE:  # KVM lists its own vendor ("Linux KVM Hv"); guests look for Hyper-V's, as QEMU sets
                b, c, d = HYPERV_VENDOR
            if PV_BASE <= fn < PV_END:
                rows.append((fn, idx, flags, a, b, c, d))
    if Pv.KVM in effective.pv:
        base = PV_KVM_MOVED if Pv.HYPERV in effective.pv else PV_BASE
        for fn, idx, flags, a, b, c, d in host.supported:
            if fn == PV_BASE:
                rows.append((base, idx, flags, base + 1, b, c, d))
            elif fn == PV_BASE + 1:
                rows.append((base + 1, idx, flags, a, b, c, d))
    return rows


def cpuid_table(effective: EffectivePlatform, host: X86Host) -> list[Row]:
    """The KVM_SET_CPUID2 rows (function, index, flags, eax, ebx, ecx, edx) giving a guest `effective`."""
    rows = [r for r in host.supported if not PV_BASE <= r[0] < PV_END]
    hide = hidden_features(effective)
    names = {b.name for b in hide}
    deps = [d for name in sorted(names) for d in X86_DEPENDENTS.get(name, ())]
    rows = _xsave_consistent(masked_table(rows, hide + deps), names)
    rows = with_bit(rows, HV_BIT, bool(effective.pv))
    if host.tsc_deadline and effective.pv:
        rows = with_bit(rows, TSC_DEADLINE_BIT, True)
    return sorted(rows + _pv_leaves(effective, host))


def for_vcpu(rows: list[Row], index: int) -> list[Row]:
    """`rows` for vCPU `index`: initial APIC id in leaf 1 EBX[31:24], x2APIC id in 0xB/0x1F EDX, 0x8000_001E EAX."""
    out: list[Row] = []
    for fn, idx, flags, a, b, c, d in rows:
        if fn == 1:
            b = (b & 0x00FFFFFF) | ((index & 0xFF) << 24)
        elif fn in (0xB, 0x1F):
            d = index
        elif fn == 0x8000001E:
            a = index
        out.append((fn, idx, flags, a, b, c, d))
    return out
