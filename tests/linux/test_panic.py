"""agent/runner/panic.py without KVM: the first panic line is noted, the last console lines are kept."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from kvmplat.agent.runner.panic import KEEP_LINES, PANIC_MARK, PanicWatch


def test_quiet_console_is_no_panic() -> None:
    w = PanicWatch()
    assert not w.feed("Linux version 6.1.0\n")
    assert w.panic == "" and w.reason() == ""


def test_first_panic_line_and_last_lines() -> None:
    w = PanicWatch()
    for i in range(30):
        w.feed(f"line {i}\r\n")
    assert w.feed("[    1.234] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    assert not w.feed("[    1.235] Kernel panic - not syncing: again\n")  # only the first panic counts
    assert w.reason() == "kernel panic: Kernel panic - not syncing: VFS: Unable to mount root fs"
    lines = w.lines()
    assert len(lines) == KEEP_LINES and lines[-1].endswith("again") and lines[0] == "line 12"
    detail = w.detail()
    assert detail.startswith(w.reason() + "\nlast console lines:\n") and "line 29" in detail
    assert "\r" not in detail


@given(st.lists(st.text(max_size=40), max_size=60))
def test_keeps_at_most_the_last_lines_in_order(texts: list[str]) -> None:
    w = PanicWatch(keep=5)
    for t in texts:
        w.feed(t)
    assert w.lines() == [t.rstrip("\r\n") for t in texts][-5:]
    assert bool(w.panic) == any(PANIC_MARK in t for t in texts)
