"""A paused machine's complete state as JSON-able data, and the way back: what snapshots and migration carry
besides guest memory.

Every kernel struct travels as its raw bytes (base64), so nothing is lost or reinterpreted; MSRs travel as
(index, value) pairs of the list the host reports (KVM_GET_MSR_INDEX_LIST: TSC, kvmclock, SYSENTER, EFER, ...).
kvmplat's own devices (the UART's registers, its unsent partial line and unread input) are one C struct.
Order of loading follows what KVM needs: CPUID is set when the vCPU is made; then regs, FPU/XSAVE, XCRs, sregs,
MSRs, LAPIC, MP state, events, debug registers; the VM's irqchip and PIT before, its clock last.
"""

from __future__ import annotations

import base64
from typing import Any

from kvmplat.agent.errors import FailedPrecondition, InvalidArgument
from kvmplat.agent.kvm.fds import MpState, Vcpu
from kvmplat.agent.kvm.x86state import IOAPIC, PIC_MASTER, PIC_SLAVE, as_bytes
from kvmplat.agent.runner.machine import Machine

__all__ = ["STATE_VERSION", "freeze", "load"]

STATE_VERSION = 1
_VCPU_STRUCTS = ("regs", "fpu", "xsave", "xcrs", "sregs", "lapic", "vcpu_events", "debugregs")
_LOAD_ORDER = ("regs", "fpu", "xsave", "xcrs", "sregs", "msrs", "lapic", "mp_state", "vcpu_events", "debugregs")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _vcpu_state(vcpu: Vcpu, msr_list: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {name: _b64(as_bytes(getattr(vcpu, f"get_{name}")())) for name in _VCPU_STRUCTS}
    out["msrs"] = [[i, v] for i, v in vcpu.get_msrs(msr_list)]
    out["mp_state"] = int(vcpu.get_mp_state())
    return out


def freeze(machine: Machine) -> dict[str, Any]:
    """The state of a machine whose vCPUs are parked (outside KVM_RUN)."""
    msr_list = machine.kvm.get_msr_index_list()
    devices = machine.devices.save()
    vm = machine.vm
    return {
        "version": STATE_VERSION,
        "vcpus": [_vcpu_state(v, msr_list) for v in machine.vcpus],
        "irqchip": [_b64(as_bytes(vm.get_irqchip(c))) for c in (PIC_MASTER, PIC_SLAVE, IOAPIC)],
        "pit2": _b64(as_bytes(vm.get_pit2())),
        "clock": _b64(as_bytes(vm.get_clock())),
        "devices": _b64(devices),
        "memory_bytes": machine.memory.size,
    }


def _raw(state: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(state[key], validate=True)
    except (KeyError, ValueError, TypeError) as e:
        raise InvalidArgument(f"machine state: {key} is missing or not base64 ({e})") from None


def _load_vcpu(vcpu: Vcpu, st: dict[str, Any]) -> list[int]:
    """Loads one vCPU; returns the MSRs this host refused."""
    refused: list[int] = []
    for name in _LOAD_ORDER:
        if name == "msrs":
            refused = vcpu.set_msrs([(int(i), int(v)) for i, v in st["msrs"]])
        elif name == "mp_state":
            vcpu.set_mp_state(MpState(int(st["mp_state"])))
        else:
            getattr(vcpu, f"set_{name}")(_raw(st, name))
    return refused


def load(machine: Machine, state: dict[str, Any]) -> list[str]:
    """Loads `state` into a machine built from the same spec (its vCPUs parked); returns notes on anything this host
    could not take (MSRs it refused). Raises InvalidArgument for a state of another shape."""
    if state.get("version") != STATE_VERSION:
        raise InvalidArgument(f"machine state version {state.get('version')!r}: this agent reads {STATE_VERSION}")
    if len(state.get("vcpus", [])) != len(machine.vcpus) or state.get("memory_bytes") != machine.memory.size:
        raise InvalidArgument("machine state: vCPU count or memory size differ from the VM's spec")
    vm = machine.vm
    for chip in state["irqchip"]:
        vm.set_irqchip(base64.b64decode(chip))
    vm.set_pit2(_raw(state, "pit2"))
    notes = []
    for vcpu, st in zip(machine.vcpus, state["vcpus"], strict=True):
        refused = _load_vcpu(vcpu, st)
        if refused:
            notes.append(f"vCPU {vcpu.index}: this host refused MSRs {', '.join(hex(i) for i in refused)}")
    try:
        loaded = machine.devices.load(_raw(state, "devices"))
    except ValueError:
        raise InvalidArgument("machine state: the device state is not one this agent wrote") from None
    if not loaded:
        raise FailedPrecondition("machine state: the device state has a version or size this agent cannot load")
    vm.set_clock(_raw(state, "clock"))
    return notes
