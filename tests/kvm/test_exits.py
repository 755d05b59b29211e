"""Exit classification with synthetic exits (no threads, no KVM)."""

from __future__ import annotations

from kvmplat.agent.kvm.devices import FastExit
from kvmplat.agent.kvm.fds import ExitReason
from kvmplat.agent.runner.exits import Exit, Verdict, classify


def test_kick_continues_the_loop() -> None:
    assert classify(Exit(FastExit.EINTR)).verdict is Verdict.KICKED


def test_device_poweroff_and_reset() -> None:
    assert classify(Exit(FastExit.POWEROFF)).verdict is Verdict.POWEROFF
    assert classify(Exit(FastExit.RESET)).verdict is Verdict.RESET


def test_triple_fault_is_a_reset() -> None:
    out = classify(Exit(FastExit.SLOW, reason=ExitReason.SHUTDOWN))
    assert out.verdict is Verdict.RESET and "triple fault" in out.detail


def test_internal_error_is_a_crash_in_plain_language() -> None:
    out = classify(Exit(FastExit.SLOW, reason=ExitReason.INTERNAL_ERROR, suberror=1))
    assert out.verdict is Verdict.CRASH and "emulator" in out.detail and out.exit_name == "internal_error"


def test_system_events() -> None:
    assert classify(Exit(FastExit.SLOW, reason=ExitReason.SYSTEM_EVENT, event_type=1)).verdict is Verdict.POWEROFF
    assert classify(Exit(FastExit.SLOW, reason=ExitReason.SYSTEM_EVENT, event_type=2)).verdict is Verdict.RESET
    assert classify(Exit(FastExit.SLOW, reason=ExitReason.SYSTEM_EVENT, event_type=3)).verdict is Verdict.CRASH


def test_failed_entry_and_errors_crash() -> None:
    fail = classify(Exit(FastExit.SLOW, reason=ExitReason.FAIL_ENTRY, hardware_reason=0x21))
    assert fail.verdict is Verdict.CRASH and "0x21" in fail.detail
    assert classify(Exit(-14)).verdict is Verdict.CRASH
    assert classify(Exit(FastExit.SLOW, reason=250)).verdict is Verdict.CRASH
