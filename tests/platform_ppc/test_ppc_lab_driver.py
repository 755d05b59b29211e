"""The lab driver (lab/ppc/lab.py) on consoles recorded from real boots: parsing, the report, the issue's checks,
and the simulated host models against what the real kernels answered."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kvmplat.agent.platform.ppc import PpcHost
from ppc_cases import GOLDEN, HOSTS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab() -> ModuleType:
    """lab/ppc/lab.py as a module (it is a script, not part of the kvmplat package)."""
    spec = importlib.util.spec_from_file_location("kvmplat_ppc_lab_driver", REPO / "lab" / "ppc" / "lab.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _boot(lab: ModuleType, config: str) -> dict[str, Any]:
    result: dict[str, Any] = lab.parse_console((GOLDEN / "lab" / f"{config}.console").read_text())
    result["seconds"] = 12.0
    return result


def test_console_parsing_finds_marker_after_kernel_banner(lab: ModuleType) -> None:
    """The BEGIN marker follows the kernel's unterminated banner; every JSON line between the markers is read."""
    hv = _boot(lab, "hv")
    assert hv["rc"] == 0 and hv["lab_seconds"] is not None and hv["lab_seconds"] > 0
    assert [next(iter(d)) for d in (hv["lines"][0], hv["lines"][-1])] == ["host", "summary"]
    assert len([d for d in hv["lines"] if "case" in d]) == 10


def test_report_matches_issue_8_shape(lab: ModuleType) -> None:
    """The report halves carry exactly what issue 8 item 5 and the acceptance check read."""
    hv, pr = lab.report_hv(_boot(lab, "hv")), lab.report_pr(_boot(lab, "pr"))
    assert hv["accel"] == "hv" and hv["compat"] == {"power8": "admitted", "power9": "admitted", "power10": "refused"}
    assert hv["kernel_agrees"] is True and hv["probe_console"] is True
    assert pr["accel"] == "pr" and set(pr["compat"].values()) == {"refused"}
    assert pr["pvinfo"] == ["564b003c", "214d0060", "02000044", "00000060"]
    assert pr["kernel_agrees"] is True and pr["mmio_exit"] is True
    assert (pr["bare_metal_ppc64"], pr["bare_metal_ppc32"], hv["bare_metal"]) == (True, True, "refused")
    assert lab.check("hv", _boot(lab, "hv")) == [] and lab.check("pr", _boot(lab, "pr")) == []


def test_checks_name_what_did_not_happen(lab: ModuleType) -> None:
    """A missing probe line, a disagreeing kernel or a nonzero lab status each fail by name."""
    hv = _boot(lab, "hv")
    broken = copy.deepcopy(hv)
    broken["lines"] = [d for d in broken["lines"] if "probe" not in d]
    failed = lab.check("hv", broken)
    assert "hv: H_PUT_TERM_CHAR console line starts with kvmplat-probe" in failed
    disagree = copy.deepcopy(hv)
    next(d for d in disagree["lines"] if d.get("case") == "spapr-power10")["kernel_agrees"] = False
    assert "hv: power10 refused, the kernel's EINVAL confirms" in lab.check("hv", disagree)
    assert lab.report_hv(dict(hv, rc=1))["kernel_agrees"] is False


@pytest.mark.parametrize(("config", "golden"), [("hv", "power9-hv"), ("pr", "power9-pr")])
def test_simulated_hosts_equal_what_the_real_kernels_answered(lab: ModuleType, config: str, golden: str) -> None:
    """The golden host models the simulated kernel plays are the hosts the lab learnt from real /dev/kvm."""
    learnt = PpcHost.from_json(next(d["host"] for d in _boot(lab, config)["lines"] if "host" in d))
    model = HOSTS[golden]
    fields = ("pvr", "kind", "accels", "default_accel", "caps", "vm_caps", "pvinfo_flags", "pvinfo_hcall")
    assert {f: getattr(learnt, f) for f in fields} == {f: getattr(model, f) for f in fields}


def test_console_without_markers_gives_no_lines(lab: ModuleType) -> None:
    """Kernel noise and JSON outside the markers are not lab results."""
    text = "SLOF\n" + json.dumps({"summary": {}}) + "\nKVMPLAT-LAB-END rc=1 uptime=3.0\n"
    assert lab.parse_console(text)["lines"] == [] and lab.parse_console(text)["rc"] == 1
