"""Node labels: golden capability → label cases, the label alphabet, the NFD file format and its atomic write.

Golden pairs are tests/golden/labels/<case>.caps.json (Capabilities as protobuf JSON) ↔ <case>.labels (the NFD
file body). Regenerate with KVMPLAT_REGEN_GOLDEN=1 (then review the diff).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from kvmplat.client.scheduling.labels import PREFIX, format_nfd, labels_from_caps, write_nfd_file
from kvmplat.v1 import agent_pb2 as pb

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "labels"
CASES = sorted(p.name.removesuffix(".caps.json") for p in GOLDEN.glob("*.caps.json"))
# Kubernetes: an optional DNS-subdomain prefix, a name of ≤ 63 [A-Za-z0-9._-] starting and ending alphanumeric.
LABEL = re.compile(
    r"^[a-z0-9.-]+/[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?=([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$"
)


def caps_of(case: str) -> pb.Capabilities:
    """The Capabilities of a golden case."""
    return json_format.Parse((GOLDEN / f"{case}.caps.json").read_text(), pb.Capabilities())


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, golden: Any) -> None:
    got = format_nfd(labels_from_caps(caps_of(case)))
    assert got == golden.text(GOLDEN / f"{case}.labels", got), f"{case}: KVMPLAT_REGEN_GOLDEN=1 if it is intended"


@pytest.mark.parametrize("case", CASES)
def test_every_line_is_a_valid_kubernetes_label(case: str) -> None:
    lines = [line for line in format_nfd(labels_from_caps(caps_of(case))).splitlines() if not line.startswith("#")]
    assert lines and all(LABEL.match(line) and line.startswith(PREFIX) for line in lines), lines


def test_a_level_needs_every_feature_and_strict_needs_exactness() -> None:
    caps = pb.Capabilities(
        levels=[
            pb.CompatLevel(name="x86-64-v1", strict=True, best_effort=True),
            pb.CompatLevel(name="x86-64-v2", best_effort=True, unhideable=["avx2"]),
            pb.CompatLevel(name="x86-64-v3", missing=["abm"]),
            pb.CompatLevel(name="x86-64-v4", strict=True, best_effort=True, missing=["avx512f"]),  # inconsistent
        ]
    )
    labels = labels_from_caps(caps)
    assert labels == {  # each level label names the policy it is admitted under (issue 18: no bare level label)
        "kvmplat.io/x86-64-v1.best-effort": "true",
        "kvmplat.io/x86-64-v1.strict": "true",
        "kvmplat.io/x86-64-v2.best-effort": "true",
    }


def test_no_level_label_without_its_policy() -> None:
    """Before issue 18, `x86-64-v2=true` was published where only BEST_EFFORT was admitted; schedulers read STRICT."""
    caps = pb.Capabilities(levels=[pb.CompatLevel(name="x86-64-v2", best_effort=True, unhideable=["avx2"])])
    assert labels_from_caps(caps) == {"kvmplat.io/x86-64-v2.best-effort": "true"}


def test_output_is_sorted_and_deterministic() -> None:
    caps = caps_of(CASES[0])
    a, b = labels_from_caps(caps), labels_from_caps(caps)
    assert list(a) == sorted(a) and a == b


def test_nfd_file_is_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "kvmplat"
    target.write_text("old\n")
    inode = target.stat().st_ino
    write_nfd_file(target, "kvmplat.io/x=true\n")
    assert target.read_text() == "kvmplat.io/x=true\n"
    assert target.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvmplat"]  # no temp file left


def test_nfd_file_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "kvmplat"
    target.write_text("old\n")

    with pytest.raises(TypeError):
        write_nfd_file(target, b"not text")  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvmplat"]
