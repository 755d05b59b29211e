"""The x86 lab's pure parts without QEMU: reading the console, judging a guest's CPUID view, the report's verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_watchdog_gives_up_on_a_silent_l1_but_not_on_a_slow_step() -> None:
    dog = lab.Watchdog(started=100.0, silence_s=600, total_s=1800)
    assert dog.verdict(100.0) is None
    dog.line("KVMPLAT-LAB-NOTE step linux", 150.0)
    assert dog.verdict(749.0) is None  # 599 s since the last lab line: a slow step, not a freeze
    assert dog.verdict(751.0) == "silent"
    dog.line('{"linux": {"ok": true}}', 740.0)  # a JSON line is lab output too
    assert dog.verdict(1300.0) is None
    assert dog.longest == 590.0


def test_watchdog_ignores_kernel_messages_of_a_frozen_l1() -> None:
    dog = lab.Watchdog(started=0.0, silence_s=600, total_s=1800)
    dog.line("KVMPLAT-LAB-NOTE round 3/5  ours  14339 ms", 10.0)
    for t in range(40, 700, 28):  # what lab-died-2.log showed: soft-lockup warnings every ~28 s, nothing else
        dog.line(f"[ {t + 1000}.753244] watchdog: BUG: soft lockup - CPU#0 stuck for {t}s! [swapper/0:0]", float(t))
        dog.line("", float(t))
    assert dog.verdict(609.0) is None
    assert dog.verdict(611.0) == "silent"
    assert dog.longest == 10.0  # only lab lines count toward the measured silence (start -> the first note)


def test_watchdog_deadline_wins_over_a_chatty_lab() -> None:
    dog = lab.Watchdog(started=0.0, silence_s=600, total_s=1800)
    for t in range(0, 1900, 60):
        dog.line("KVMPLAT-LAB-NOTE still going", float(t))
    assert dog.verdict(1801.0) == "deadline"


def test_a_frozen_boot_is_booted_again_for_the_steps_not_reported(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setattr(lab, "CACHE", tmp_path)
    (tmp_path / "logs").mkdir()
    boots: list[str] = []

    def fake_boot(cmd: list[str]) -> dict[str, Any]:
        boots.append(cmd[0])  # the steps this boot skips
        (tmp_path / "logs" / "lab.log").write_text("console")
        if len(boots) == 1:  # froze during the linux step: QEMU killed by the watchdog
            return {
                "steps": {"caps": {}, "demo": {}, "guest_view": {}},
                "notes": [],
                "lab_seconds": None,
                "ended": False,
                "frozen": True,
            }
        return {"steps": {"linux": {}, "boot": {}}, "notes": [], "lab_seconds": 9.0, "ended": True}

    monkeypatch.setattr(lab, "boot", fake_boot)
    monkeypatch.setattr(lab, "qemu_command", lambda img, initrd, skip: [skip])
    result = lab.boot_until_done({}, tmp_path / "initrd", "")
    assert boots == ["", "caps,demo,guest_view"]
    assert set(result["steps"]) == set(lab.STEPS)
    assert (tmp_path / "logs" / "lab-died-1.log").read_text() == "console"
