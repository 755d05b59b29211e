"""Golden pairs tests/golden/domains/<case>.xml ↔ <case>.json, compared by meaning (parsed JSON, proto equality).

Regenerate after an intended change with
`KVMPLAT_REGEN_GOLDEN=1 .venv/bin/pytest tests/libvirt/test_domain_xml_golden.py`
and review the diff: the JSON files are the reviewed statement of what each libvirt form becomes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from kvmplat.client.libvirt.domain_xml import Translation, to_domain_xml, translate
from kvmplat.v1 import agent_pb2 as pb

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "domains"
CASES = sorted(p.stem for p in GOLDEN.glob("*.xml"))


def as_golden(t: Translation) -> dict[str, Any]:
    """The JSON form of a translation: protobuf JSON of the spec, then warnings, uuid and opt-in."""
    return {
        "spec": json_format.MessageToDict(t.spec, preserving_proto_field_name=True),
        "warnings": list(t.warnings),
        "uuid": t.uuid,
        "opt_in": t.opt_in,
    }


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30
    assert any(c.startswith("x86") for c in CASES) and any(c.startswith("ppc") for c in CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, golden: Any) -> None:
    got = as_golden(translate((GOLDEN / f"{case}.xml").read_text()))
    want = golden.json(GOLDEN / f"{case}.json", got)
    assert got["warnings"] == want["warnings"]
    assert (got["uuid"], got["opt_in"]) == (want["uuid"], want["opt_in"])
    assert json_format.ParseDict(want["spec"], pb.VmSpec()) == translate((GOLDEN / f"{case}.xml").read_text()).spec


@pytest.mark.parametrize("case", CASES)
def test_reverse_round_trips_every_golden_spec(case: str) -> None:
    t = translate((GOLDEN / f"{case}.xml").read_text())
    back = translate(to_domain_xml(t.spec, uuid=t.uuid, opt_in=t.opt_in))
    assert back.spec == t.spec
    assert (back.uuid, back.opt_in) == (t.uuid, t.opt_in)
