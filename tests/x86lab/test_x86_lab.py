"""The x86 lab's pure parts without QEMU: reading the console, judging a guest's CPUID view, the report's verdicts."""

from __future__ import annotations

import json

from kvmplat.lab.x86 import guest_view as gv
from kvmplat.lab.x86 import lab
from kvmplat.v1 import agent_pb2 as pb


def _view(hv_bit: bool, base: tuple[int, ...] = (0, 0, 0, 0)) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    return {(1, 0): (0, 0, (1 << 31) if hv_bit else 0, 0), (0x40000000, 0): base}  # type: ignore[dict-item]


def test_probe_lines_parse_and_compare_outside_the_dynamic_bits() -> None:
    text = "kvmplat-probe cpu 0 of 1\ncpuid 00000001 00000000 00000001 05000000 08000001 00000200\n"
    seen = gv.parse(text)
    assert seen == {(1, 0): (1, 0x05000000, 0x08000001, 0x200)}
    rows = [(1, 0, 0, 1, 0, 1, 0)]  # APIC id, OSXSAVE and the APIC bit are KVM's at run time
    assert gv.compare(seen, rows, amd=True) == []
    assert gv.compare(seen, [(1, 0, 0, 1, 0, 0, 0)], amd=True) == ["0x1.0 ecx: guest 0x08000001, table 0x00000000"]
    assert gv.compare({(0x40000100, 0): (0, 1, 0, 0)}, rows, amd=True)  # absent leaf: zeros on AMD
    assert gv.compare({(0x40000100, 0): (0, 1, 0, 0)}, rows, amd=False) == []  # Intel: not judged


def test_promises_hypervisor_bit_and_signatures() -> None:
    bare, kvm, hv = pb.EffectivePlatform(), pb.EffectivePlatform(pv=[pb.KVM]), pb.EffectivePlatform(pv=[pb.HYPERV])
    assert gv.promises(_view(False), bare) == []
    assert gv.promises(_view(True), bare) == ["hypervisor bit set with pv []"]
    assert gv.promises(_view(True, (0, *gv.KVM_SIG)), kvm) == []
    assert "0x40000000 reads Microsoft Hv" in gv.promises(_view(True, (0, *gv.KVM_SIG)), hv)
    seen = _view(True, (0, *gv.HV_SIG)) | {(0x40000001, 0): (gv.HV_INTERFACE, 0, 0, 0)}
    assert gv.promises(seen, hv) == []
    assert "no KVMKVMKVM anywhere without pv KVM" in gv.promises(seen | {(0x40000100, 0): (0, *gv.KVM_SIG)}, hv)
    v2 = pb.EffectivePlatform(compat="x86-64-v2")
    assert gv.promises(_view(False) | {(7, 0): (0, 1 << 5, 0, 0)}, v2) == ["avx2 (x86-64-v3) visible above x86-64-v2"]


def test_console_markers_and_the_report() -> None:
    steps = {
        "caps": {"accel": "kvm-amd", "levels": dict(zip(lab.LEVELS, ["admitted"] * 3 + ["refused"], strict=True))},
        "demo": {"ok": True},
        "guest_view": {"cases": {k: {"ok": True} for k in lab.GUEST_VIEWS}},
        "linux": {"ok": True, **dict.fromkeys(lab.LINUX, True)},
        "boot": {"ours_ms": 900.0, "qemu_microvm_ms": 1000.0, "ratio_vs_qemu_microvm": 0.9},
    }
    text = "noise\nKVMPLAT-LAB-BEGIN kernel=x uptime=1.5\n" + "\n".join(json.dumps({k: v}) for k, v in steps.items())
    parsed = lab.parse_console(text + '\nKVMPLAT-LAB-NOTE hi\nKVMPLAT-LAB-END rc=0 uptime=11.5\n{"late": 1}\n')
    assert parsed["steps"] == steps and parsed["lab_seconds"] == 10.0 and parsed["notes"] == ["KVMPLAT-LAB-NOTE hi"]
    assert parsed["ended"] and not lab.parse_console(text)["ended"]  # no END marker: the L1 kernel died
    r = lab.report(parsed["steps"], 0.0)
    assert r["boot_ratio_vs_qemu_microvm"] == 0.9 and r["demo"] is True and all(r["linux"].values())
    failed = lab.failures(r, steps)
    assert failed == ["v4's refusal names the avx512 features", "pv KVM and HYPERV offered"]
