"""Golden tests: resolve_ppc over every host fixture (tests/golden/ppc/hosts) × the request matrix.

Each host has tests/golden/ppc/resolve/<host>.json: per case, the effective platform or the refusal's class, field
and text. Regenerate after an intended change with `KVMPLAT_REGEN_GOLDEN=1 pytest tests/platform_ppc`, then review
the diff before committing.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.ppc import PpcHost, resolve_ppc
from ppc_cases import CASES, GOLDEN, HOSTS


def _outcome(host: PpcHost, name: str) -> dict[str, Any]:
    try:
        eff = resolve_ppc(CASES[name], host)
    except PlatformRefused as e:
        return {"refused": e.field, "text": str(e)}
    except InvalidArgument as e:
        return {"invalid": [list(v) for v in e.violations], "text": str(e)}
    return {
        "abi": eff.abi.name,
        "pv": [p.name for p in eff.pv],
        "compat": eff.compat,
        "compat_raw": f"0x{eff.compat_raw:08x}",
        "policy": eff.policy.name,
        "bits": eff.bits,
        "accel": eff.accel,
        "arch": eff.arch.name if eff.arch else None,
        "cross_arch": eff.cross_arch,
        "notes": list(eff.notes),
        "visible_above_level": list(eff.visible_above_level),
    }


@pytest.mark.parametrize("host_name", sorted(HOSTS))
def test_resolve_ppc_golden(host_name: str, golden: Any) -> None:
    """Every case's outcome on this host equals the golden file's."""
    got = {name: _outcome(HOSTS[host_name], name) for name in CASES}
    want = golden.json(GOLDEN / "resolve" / f"{host_name}.json", got, ensure_ascii=True)
    assert got.keys() == want.keys()
    for name in got:
        assert got[name] == want[name], name


def test_power9_hv_admits_power6_to_power9_and_refuses_power10() -> None:
    """Issue 3 item 6: POWER9 HV host admits power6..power9 (ARCH_COMPAT logical PVRs), refuses power10."""
    host = HOSTS["power9-hv"]
    for name, raw in (("power6", 0x0F000002), ("power7", 0x0F000003), ("power8", 0x0F000004), ("power9", 0x0F000005)):
        eff = resolve_ppc(CASES[f"spapr-{name}"], host)
        assert (eff.accel, eff.compat, eff.compat_raw) == ("hv", name, raw)
    with pytest.raises(PlatformRefused) as e:
        resolve_ppc(CASES["spapr-power10"], host)
    assert e.value.field == "compat" and "power10" in e.value.asked and e.value.offered == "power6..power9"


def test_pr_host_refuses_strict_compat_and_notes_best_effort() -> None:
    """PR cannot set ARCH_COMPAT: STRICT refused naming it, BEST_EFFORT admitted with a note."""
    host = HOSTS["power9-pr"]
    with pytest.raises(PlatformRefused) as e:
        resolve_ppc(CASES["spapr-power8"], host)
    assert e.value.field == "compat" and "ARCH_COMPAT" in e.value.reason
    eff = resolve_ppc(CASES["spapr-power8-best-effort"], host)
    assert eff.accel == "pr" and eff.visible_above_level == ("power9",)
    assert any("not applied" in n for n in eff.notes)


def test_accel_refusals_name_the_other_flavour() -> None:
    """HV on a PR-only host and PR on an HV-only host are refused with what the host offers."""
    with pytest.raises(PlatformRefused, match=r"accel HV .* \(this host offers: PR\)"):
        resolve_ppc(CASES["accel-hv"], HOSTS["power9-pr"])
    with pytest.raises(PlatformRefused, match=r"accel PR .* \(this host offers: HV\)"):
        resolve_ppc(CASES["accel-pr"], HOSTS["power9-hv"])


def test_pv_kvm_reports_the_pvinfo_hypercall_sequence() -> None:
    """pv KVM on PR: the notes carry KVM_PPC_GET_PVINFO's four words."""
    eff = resolve_ppc(CASES["spapr-pv-kvm"], HOSTS["power9-pr"])
    assert "564b003c 214d0060 02000044 00000060" in " ".join(eff.notes)


def test_cross_arch_is_decided_by_the_agent() -> None:
    """A 32-bit Book3S guest on POWER is cross-arch; a compat level is not."""
    assert resolve_ppc(CASES["bare-metal-32bit-pv-kvm"], HOSTS["power9-pr"]).cross_arch
    assert not resolve_ppc(CASES["spapr-power8"], HOSTS["power9-hv"]).cross_arch
