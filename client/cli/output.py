"""How the CLI shows agent messages: protobuf JSON for machines (`--json`), short lines and tables for people.

Pure functions from proto messages to text, so tests use real messages and compare strings. Enum names are shown
without their protobuf prefix (RUNNING, BARE_METAL, UNSPECIFIED).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence

from google.protobuf import json_format
from google.protobuf.message import Message
from kvmplat.client.specfile import enum_prefix
from kvmplat.client.vmstates import state_name
from kvmplat.v1 import agent_pb2 as pb

__all__ = [
    "enum_label",
    "format_caps",
    "format_event",
    "format_platform",
    "format_vm",
    "format_vm_line",
    "format_vm_table",
    "table",
    "to_json",
]


def to_json(message: Message, one_line: bool = False) -> str:
    """The protobuf JSON of `message` (camelCase, enum names), every field present; one line when `one_line`."""
    return json_format.MessageToJson(
        message, indent=None if one_line else 2, always_print_fields_with_no_presence=True, sort_keys=False
    )


def enum_label(enum: object, number: int) -> str:
    """The name of value `number` of the protobuf enum wrapper `enum`, without the type's prefix."""
    descriptor = enum.DESCRIPTOR  # type: ignore[attr-defined]
    value = descriptor.values_by_number.get(number)
    if value is None:
        return str(number)
    name: str = value.name
    return name.removeprefix(enum_prefix(descriptor))


def _names(enum: object, numbers: Iterable[int]) -> str:
    """Comma-separated enum labels, or '-' for none."""
    return ", ".join(enum_label(enum, n) for n in numbers) or "-"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    all_rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in all_rows]
    return "\n".join(lines)


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    """Aligned `key  value` lines."""
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)


def _level(level: pb.CompatLevel) -> str:
    """One compat level and how the host admits it."""
    how = "strict" if level.strict else "best effort" if level.best_effort else "refused"
    how = f"above the ceiling: {', '.join(level.above_ceiling_features) or 'newer'}" if level.above_ceiling else how
    extra = f"; missing {', '.join(level.missing)}" if level.missing else ""
    extra += f"; cannot hide {', '.join(level.unhideable)}" if level.unhideable else ""
    return f"{level.name} ({how}{extra})"


def format_caps(caps: pb.Capabilities) -> str:
    """A readable summary of the host's capabilities."""
    pairs = [
        ("arch", caps.arch + (f" (guests: {_names(pb.Arch, caps.arches)})" if caps.arches else "")),
        ("kvm api", str(caps.kvm_api_version)),
        ("accel", f"{caps.accel_default or '-'} (offered: {', '.join(caps.accels) or '-'})"),
        ("vcpus", f"{caps.vcpus_free} of {caps.vcpus_total} free; per VM max {caps.max_vcpus}"),
        ("memory", f"{caps.memory_free_mib} of {caps.memory_mib} MiB free"),
        ("abis", _names(pb.Abi, caps.abis)),
        ("pv", _names(pb.Pv, caps.pv)),
        ("levels", "; ".join(_level(lv) for lv in caps.levels) or "-"),
        ("max level", f"{caps.max_level} (nothing above it is offered)" if caps.max_level else "none"),
        ("builtins", ", ".join(caps.builtin_payloads) or "-"),
        ("host truth", caps.host_truth_source or "-"),
        ("agent", caps.agent_version or "-"),
    ]
    return _pairs(pairs)


def format_platform(ep: pb.EffectivePlatform) -> str:
    """The effective platform as aligned lines, notes last."""
    compat = ep.compat or "host level"
    if ep.compat_raw:
        compat += f" ({ep.compat_raw:#x})"
    pairs = [
        ("arch", enum_label(pb.Arch, ep.arch) if ep.arch else "-"),
        ("abi", enum_label(pb.Abi, ep.abi)),
        ("pv", _names(pb.Pv, ep.pv)),
        ("compat", f"{compat}, {enum_label(pb.CompatPolicy, ep.compat_policy)}"),
        ("bits", str(ep.bits or (32 if ep.arch == pb.PPC else 64))),
        ("accel", ep.accel or "-"),
        ("cross arch", "yes" if ep.cross_arch else "no"),
    ]
    if ep.visible_above_level:
        pairs.append(("visible above level", ", ".join(ep.visible_above_level)))
    pairs.extend(("note", n) for n in ep.notes)
    return _pairs(pairs)


def format_vm_line(vm: pb.Vm) -> str:
    """`NAME: STATE` plus the reason, for lifecycle commands."""
    reason = f" ({vm.state_reason})" if vm.state_reason else ""
    return f"{vm.spec.name}: {state_name(vm.state)}{reason}"


def format_vm(vm: pb.Vm) -> str:
    """Everything about one VM, for `show`."""
    boot = vm.spec.boot
    source = f"builtin {boot.builtin}" if boot.HasField("builtin") else f"kernel {boot.kernel}" if boot.kernel else "-"
    pairs = [
        ("name", vm.spec.name),
        ("state", state_name(vm.state) + (f" ({vm.state_reason})" if vm.state_reason else "")),
        ("vcpus", str(vm.spec.vcpus)),
        ("memory", f"{vm.spec.memory_mib} MiB"),
        ("boot", source),
        ("runner pid", str(vm.runner_pid or "-")),
        ("last seq", str(vm.last_seq)),
        ("exits", str(vm.stats.exits)),
    ]
    if vm.spec.labels:
        pairs.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(vm.spec.labels.items()))))
    platform = "\n".join("  " + line for line in format_platform(vm.effective_platform).splitlines())
    return f"{_pairs(pairs)}\neffective platform:\n{platform}"


def format_vm_table(vms: Sequence[pb.Vm]) -> str:
    """One row per VM, for `list`."""
    rows = [
        (
            vm.spec.name,
            state_name(vm.state),
            str(vm.spec.vcpus),
            f"{vm.spec.memory_mib} MiB",
            str(vm.runner_pid or "-"),
            vm.effective_platform.accel or "-",
            vm.state_reason,
        )
        for vm in sorted(vms, key=lambda v: v.spec.name)
    ]
    return table(("NAME", "STATE", "VCPUS", "MEMORY", "PID", "ACCEL", "REASON"), rows)


def _clock(event: pb.Event) -> str:
    """The event's local wall time with milliseconds, or '' when unset."""
    if not event.HasField("time"):
        return ""
    when = _dt.datetime.fromtimestamp(event.time.seconds + event.time.nanos / 1e9)
    return when.strftime("%H:%M:%S.%f")[:-3] + " "


def _kind(event: pb.Event) -> str:
    """The event's payload as text."""
    kind = event.WhichOneof("kind")
    if kind == "state":
        s = event.state
        reason = f": {s.reason}" if s.reason else ""
        before = getattr(s, "from")  # `from` is a Python keyword
        moved = f"{state_name(before)} -> {state_name(s.to)}" if before else state_name(s.to)
        return f"state {moved}{reason}"
    if kind == "console":
        return "| " + event.console.text.rstrip("\n")
    if kind == "exit":
        x = event.exit
        return f"exit {x.reason} on vcpu {x.vcpu}" + (f": {x.detail}" if x.detail else "")
    if kind == "error":
        return f"error: {event.error.message}"
    return "(empty event)"


def format_event(event: pb.Event) -> str:
    """One event as one line (a console event may hold several lines, each shown as is)."""
    return f"#{event.seq} {_clock(event)}{event.vm} {_kind(event)}"
