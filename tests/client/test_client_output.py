"""Output formatting with real proto messages: JSON shapes the acceptance checks read, and readable text."""

from __future__ import annotations

import json

from google.protobuf.timestamp_pb2 import Timestamp
from kvmplat.client.cli import output
from kvmplat.client.vmstates import state_name
from kvmplat.v1 import agent_pb2 as pb


def _vm(name: str = "b1", state: int = pb.RUNNING, pid: int = 77) -> pb.Vm:
    spec = pb.VmSpec(name=name, vcpus=2, memory_mib=16, boot=pb.BootSpec(builtin="loop"))
    platform = pb.EffectivePlatform(abi=pb.BARE_METAL, pv=[pb.KVM], accel="kvm_pvm", notes=["slow: emulated"])
    return pb.Vm(spec=spec, state=state, runner_pid=pid, effective_platform=platform, last_seq=3)


def test_show_json_has_state_runner_pid_and_platform() -> None:
    data = json.loads(output.to_json(_vm()))
    assert data["state"] == "RUNNING"
    assert data["runnerPid"] == 77
    assert data["effectivePlatform"]["abi"] == "BARE_METAL"


def test_fields_without_presence_are_always_printed() -> None:
    data = json.loads(output.to_json(_vm(state=pb.CREATED, pid=0)))
    assert data["runnerPid"] == 0 and data["state"] == "CREATED"
    event = json.loads(output.to_json(pb.Event(vm="a"), one_line=True))
    assert int(event["seq"]) == 0


def test_caps_json_is_camel_case() -> None:
    data = json.loads(output.to_json(pb.Capabilities(arch="x86_64", kvm_api_version=12)))
    assert data["arch"] == "x86_64" and data["kvmApiVersion"] == 12


def test_list_json_names_every_vm() -> None:
    text = output.to_json(pb.ListVmsResponse(vms=[_vm("a"), _vm("b")]))
    assert [v["spec"]["name"] for v in json.loads(text)["vms"]] == ["a", "b"]
    assert json.loads(output.to_json(pb.ListVmsResponse())) == {"vms": []}


def test_event_json_is_one_line_with_seq() -> None:
    text = output.to_json(pb.Event(seq=12, vm="p1", console=pb.ConsoleText(text="kvmplat-probe 0\n")), one_line=True)
    assert "\n" not in text
    data = json.loads(text)
    assert int(data["seq"]) == 12 and data["console"]["text"] == "kvmplat-probe 0\n"


def test_enum_labels_drop_the_prefix() -> None:
    assert state_name(pb.VM_STATE_UNSPECIFIED) == "UNSPECIFIED"
    assert state_name(pb.PAUSED) == "PAUSED"
    assert state_name(99) == "99"  # a state a newer agent may report
    assert output.enum_label(pb.CompatPolicy, pb.COMPAT_POLICY_UNSPECIFIED) == "UNSPECIFIED"
    assert output.enum_label(pb.Abi, 99) == "99"


def test_event_lines() -> None:
    when = Timestamp(seconds=0)
    change = pb.Event(seq=4, vm="b1", state=pb.StateChange(**{"from": pb.RUNNING, "to": pb.PAUSED, "reason": "asked"}))
    assert output.format_event(change) == "#4 b1 state RUNNING -> PAUSED: asked"
    assert output.format_event(pb.Event(seq=1, vm="b1", state=pb.StateChange(to=pb.CREATED))) == "#1 b1 state CREATED"
    console = pb.Event(seq=5, vm="b1", time=when, console=pb.ConsoleText(text="tick\n"))
    assert output.format_event(console).endswith(" b1 | tick")
    exit_ = pb.Event(seq=6, vm="b1", exit=pb.ExitSummary(reason="hlt", vcpu=1, detail="guest halted"))
    assert output.format_event(exit_) == "#6 b1 exit hlt on vcpu 1: guest halted"
    assert output.format_event(pb.Event(seq=7, vm="b1", error=pb.ErrorEvent(message="boom"))) == "#7 b1 error: boom"


def test_vm_table_and_line() -> None:
    text = output.format_vm_table([_vm("zz", pb.STOPPED, 0), _vm("aa")])
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "VCPUS", "MEMORY", "PID", "ACCEL", "REASON"]
    assert lines[1].split()[:2] == ["aa", "RUNNING"] and lines[2].split()[:2] == ["zz", "STOPPED"]
    assert output.format_vm_line(_vm()) == "b1: RUNNING"


def _squeezed(text: str) -> list[str]:
    """Lines with runs of spaces squeezed, so tests do not depend on column widths."""
    return [" ".join(line.split()) for line in text.splitlines()]


def test_show_and_caps_text() -> None:
    shown = _squeezed(output.format_vm(_vm()))
    assert {"state RUNNING", "runner pid 77", "pv KVM", "note slow: emulated", "effective platform:"} <= set(shown)
    caps = pb.Capabilities(
        arch="x86_64", kvm_api_version=12, levels=[pb.CompatLevel(name="x86-64-v3", best_effort=True, missing=["avx2"])]
    )
    text = _squeezed(output.format_caps(caps))
    assert {"arch x86_64", "kvm api 12", "levels x86-64-v3 (best effort; missing avx2)"} <= set(text)
