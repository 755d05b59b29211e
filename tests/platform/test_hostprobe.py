"""Host truth from probe guests on this machine, and its cache (real KVM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kvmplat.agent.kvm.fds import Kvm
from kvmplat.agent.platform.hostprobe import guest_cpuid, load_or_probe
from kvmplat.agent.platform.x86host import X86Host

pytestmark = pytest.mark.kvm
# The acceptance ground truth lives in the shared folder beside the checkout (../shared); KVMPLAT_SHARED_DIR names
# another place (a worktree whose parent has no shared/). Where it is present the comparison runs: it never skips.
SHARED = Path(os.environ.get("KVMPLAT_SHARED_DIR") or Path(__file__).resolve().parents[2].parent / "shared")
HOSTCPU = SHARED / "acceptance" / "hostcpu.py"


def test_probe_guest_reads_cpuid() -> None:
    with Kvm() as kvm:
        view = guest_cpuid(kvm, kvm.get_supported_cpuid(), [(0, 0), (0x80000000, 0)])
    assert view[(0, 0)][0] >= 1 and view[(0x80000000, 0)][0] >= 0x80000001


def test_probe_round_trips_through_json(host_truth: Any) -> None:
    again = X86Host.from_json(json.loads(json.dumps(host_truth.to_json())))
    assert again == host_truth


@pytest.mark.skipif(not HOSTCPU.exists(), reason=f"acceptance ground truth not beside this checkout: {HOSTCPU}")
def test_probe_agrees_with_the_acceptance_ground_truth(host_truth: Any) -> None:
    truth = json.loads(subprocess.run([sys.executable, str(HOSTCPU)], capture_output=True, check=True).stdout)
    for feats in truth["levels"].values():
        for f in feats:
            mine = host_truth.feature(f["feature"])
            assert (mine.seen, mine.hideable) == (f["present"], f["hideable"]), f["feature"]
    assert host_truth.hv_bit_hideable == truth["hv_bit_hideable"]
    assert host_truth.kvm_leaves_hideable == truth["kvm_leaves_hideable"]
    assert host_truth.hyperv == truth["hyperv"]
    assert (host_truth.accel == "kvm_pvm") == (truth["backend"] == "kvm_pvm")


def test_cache_is_used_then_invalidated_by_a_new_kernel(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "host.json"
    with Kvm() as kvm:
        first = load_or_probe(kvm, path)
        assert first.source == "probe guests" and path.exists()
        cached = load_or_probe(kvm, path)
        assert cached.source == "cache" and cached.features == first.features
        data = json.loads(path.read_text())
        data["key"]["kernel_release"] = "0.0-other"
        path.write_text(json.dumps(data))
        assert load_or_probe(kvm, path).source == "probe guests"
        assert load_or_probe(kvm, path, refresh=True).source == "probe guests"
        path.write_text("{not json")
        assert load_or_probe(kvm, path).source == "probe guests"
    assert not list(path.parent.glob(".*.tmp"))
