"""Golden resolution cases: tests/golden/platform/<case>.json holds a host fixture name, a request and the expected
effective platform or refusal. Regenerate the expectations with KVMPLAT_REGEN_GOLDEN=1 (then review the diff)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hosts import load_host
from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.model import Abi, Accel, Arch, CompatPolicy, PlatformRequest, Pv
from kvmplat.agent.platform.resolve import resolve

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "platform"
CASES = sorted(GOLDEN.glob("*.json"))


def request_of(data: dict[str, Any]) -> PlatformRequest:
    """A PlatformRequest from a case's `request` (enum names; missing keys take the model's defaults)."""
    return PlatformRequest(
        abi=Abi[data["abi"]] if data.get("abi") else None,
        pv=frozenset(Pv[p] for p in data.get("pv", [])),
        compat=data.get("compat", ""),
        policy=CompatPolicy[data.get("policy", "STRICT")],
        bits=data.get("bits", 0),
        accel=Accel[data.get("accel", "AUTO")],
        arch=Arch[data["arch"]] if data.get("arch") else None,
    )


def outcome(case: dict[str, Any]) -> dict[str, Any]:
    """The resolution of a case as JSON: {"effective": {...}} or {"refused": {...}}."""
    try:
        eff = resolve(request_of(case["request"]), load_host(case["host"]), case.get("max_level", ""))
    except PlatformRefused as e:
        return {"refused": {"error": "PlatformRefused", "field": e.field, "message": str(e)}}
    except InvalidArgument as e:
        return {"refused": {"error": "InvalidArgument", "field": e.violations[0][0], "message": str(e)}}
    d = dataclasses.asdict(eff)
    d.update(abi=eff.abi.name, pv=[p.name for p in eff.pv], policy=eff.policy.name)
    d.update(arch=eff.arch.name if eff.arch else None)
    d.update(notes=list(eff.notes), visible_above_level=list(eff.visible_above_level))
    return {"effective": d}


def test_there_are_golden_cases_for_both_host_kinds() -> None:
    hosts = {json.loads(p.read_text())["host"] for p in CASES}
    assert {"kvm_pvm-epyc", "kvm-amd-hardware"} <= hosts


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_case(path: Path, golden: Any) -> None:
    case = json.loads(path.read_text())
    got = outcome(case)
    want = golden.json(path, {**case, "expect": got}, indent=1).get("expect")
    assert got == want, f"{path.name}: rerun with KVMPLAT_REGEN_GOLDEN=1 if the change is intended"
