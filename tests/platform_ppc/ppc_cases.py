"""Shared PowerPC test data: the host fixtures and the request matrix the golden and lab tests walk."""

from __future__ import annotations

from pathlib import Path

from kvmplat.agent.platform.model import Abi, Accel, CompatPolicy, PlatformRequest, Pv
from kvmplat.agent.platform.ppc import PpcHost

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "ppc"
HOSTS = {p.stem: PpcHost.from_file(p) for p in sorted((GOLDEN / "hosts").glob("*.json"))}
KVM = frozenset({Pv.KVM})
BEST = CompatPolicy.BEST_EFFORT


def _cases() -> dict[str, PlatformRequest]:
    """Named requests: every abi, accel, level (both policies), raw PVRs, pv and bits."""
    cases: dict[str, PlatformRequest] = {"default": PlatformRequest()}
    for accel in Accel:
        cases[f"accel-{accel.name.lower()}"] = PlatformRequest(accel=accel)
    for level in ("power6", "power7", "power7+", "power8", "power9", "power10", "isa-2.07"):
        cases[f"spapr-{level}"] = PlatformRequest(abi=Abi.SPAPR, compat=level)
        cases[f"spapr-{level}-best-effort"] = PlatformRequest(abi=Abi.SPAPR, compat=level, policy=BEST)
    cases["spapr-power8-hv"] = PlatformRequest(abi=Abi.SPAPR, compat="power8", accel=Accel.HV)
    cases["spapr-power8-pr"] = PlatformRequest(abi=Abi.SPAPR, compat="power8", accel=Accel.PR)
    cases["spapr-pr"] = PlatformRequest(abi=Abi.SPAPR, accel=Accel.PR)
    cases["spapr-pv-kvm"] = PlatformRequest(abi=Abi.SPAPR, pv=KVM)
    cases["spapr-pv-hyperv"] = PlatformRequest(abi=Abi.SPAPR, pv=frozenset({Pv.HYPERV}))
    cases["bare-metal"] = PlatformRequest(abi=Abi.BARE_METAL)
    cases["bare-metal-32bit-pv-kvm"] = PlatformRequest(abi=Abi.BARE_METAL, pv=KVM, bits=32)
    cases["bare-metal-32bit-g4-pvr"] = PlatformRequest(abi=Abi.BARE_METAL, compat="0x80030101", bits=32)
    cases["bare-metal-32bit-power8"] = PlatformRequest(abi=Abi.BARE_METAL, compat="power8", bits=32)
    cases["spapr-970-pvr"] = PlatformRequest(abi=Abi.SPAPR, compat="0x00390202")
    cases["spapr-host-pvr"] = PlatformRequest(abi=Abi.SPAPR, compat="0x004e1200")
    cases["spapr-logical-2.04"] = PlatformRequest(abi=Abi.SPAPR, compat="0x0f000001")
    cases["spapr-logical-power8"] = PlatformRequest(abi=Abi.SPAPR, compat="0x0f000004")
    cases["spapr-unknown-pvr-strict"] = PlatformRequest(abi=Abi.SPAPR, compat="0x12340000")
    cases["spapr-unknown-level"] = PlatformRequest(abi=Abi.SPAPR, compat="x86-64-v2")
    cases["booke"] = PlatformRequest(abi=Abi.BOOKE)
    cases["booke-32bit-pv-kvm"] = PlatformRequest(abi=Abi.BOOKE, pv=KVM, bits=32)
    cases["booke-e500v2-pvr"] = PlatformRequest(abi=Abi.BOOKE, compat="0x80210030", bits=32)
    cases["bits-16"] = PlatformRequest(bits=16)
    return cases


CASES = _cases()
