"""What a vCPU exit means for the VM: a pure function of the exit, testable with synthetic exits.

The C fast loop (fastloop.c) handles port I/O and MMIO itself; what reaches here is a kick, a guest poweroff or
reset signalled by a device, or an exit the fast path does not handle.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kvmplat.agent.kvm.devices import FastExit
from kvmplat.agent.kvm.fds import ExitReason, exit_reason_name
from kvmplat.agent.runner.crashinfo import kvm_reported_bytes

__all__ = ["Exit", "Outcome", "Verdict", "classify"]

SYSTEM_EVENTS = {1: "shutdown", 2: "reset", 3: "crash"}
INTERNAL_SUBERRORS = {
    1: "the instruction emulator could not run an instruction",
    2: "an exception occurred while delivering another (simultaneous exceptions)",
    3: "an event could not be delivered",
    4: "KVM saw an exit reason it did not expect",
}


class Verdict(enum.Enum):
    """What the runner does next."""

    CONTINUE = "continue"  # re-enter the guest
    KICKED = "kicked"  # a pause or stop request interrupted KVM_RUN
    POWEROFF = "guest poweroff"
    RESET = "guest reset"
    CRASH = "crash"


@dataclass(frozen=True)
class Exit:
    """One return of the fast loop: its code, and for FastExit.SLOW the kvm_run fields that matter."""

    code: int
    reason: int = 0
    suberror: int = 0
    data: tuple[int, ...] = ()
    event_type: int = 0
    hardware_reason: int = 0


@dataclass(frozen=True)
class Outcome:
    """The verdict with a plain-language detail and the exit's name."""

    verdict: Verdict
    exit_name: str = ""
    detail: str = ""
    extra: dict[str, int] = field(default_factory=dict)
    instruction: bytes = b""  # what KVM reported at rip for an emulation failure, when it did


def classify(e: Exit) -> Outcome:
    """Maps a fast-loop return to what happens to the VM."""
    if e.code == FastExit.EINTR:
        return Outcome(Verdict.KICKED, "intr")
    if e.code == FastExit.POWEROFF:
        return Outcome(Verdict.POWEROFF, "io", "the guest wrote the kvmplat exit port")
    if e.code == FastExit.RESET:
        return Outcome(Verdict.RESET, "io", "the guest pulsed the i8042 reset line")
    if e.code < 0:
        return Outcome(Verdict.CRASH, "run", f"KVM_RUN failed with errno {-e.code}")
    return _classify_slow(e)


def _classify_slow(e: Exit) -> Outcome:
    name = exit_reason_name(e.reason)
    if e.reason == ExitReason.SHUTDOWN:
        return Outcome(Verdict.RESET, name, "triple fault: the guest reset the machine")
    if e.reason == ExitReason.HLT:
        return Outcome(Verdict.POWEROFF, name, "the guest halted with no interrupt controller to wake it")
    if e.reason == ExitReason.SYSTEM_EVENT:
        kind = SYSTEM_EVENTS.get(e.event_type, f"type {e.event_type}")
        verdict = {"shutdown": Verdict.POWEROFF, "reset": Verdict.RESET}.get(kind, Verdict.CRASH)
        return Outcome(verdict, name, f"system event: {kind}")
    if e.reason == ExitReason.INTERNAL_ERROR:
        why = INTERNAL_SUBERRORS.get(e.suberror, f"suberror {e.suberror}")
        insn = kvm_reported_bytes(e.data) if e.suberror == 1 else b""
        return Outcome(Verdict.CRASH, name, f"KVM internal error: {why}", {"suberror": e.suberror}, insn)
    if e.reason == ExitReason.FAIL_ENTRY:
        return Outcome(Verdict.CRASH, name, f"entering the guest failed (hardware reason {e.hardware_reason:#x})")
    return Outcome(Verdict.CRASH, name, f"unexpected exit {name}: kvmplat has no device for it")
