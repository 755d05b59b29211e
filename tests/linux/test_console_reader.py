"""The console reader on a real pipe: whole lines, a quiet partial line, and overlong lines in bounded pieces."""

from __future__ import annotations

import os
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from kvmplat.agent.runner.consolereader import LINE_MAX, ConsoleReader


def read_all(data: bytes) -> list[str]:
    """Everything a reader emits for `data` written to its pipe, once it has been stopped."""
    r, w = os.pipe()
    out: list[str] = []
    lock = threading.Lock()

    def emit(text: str) -> None:
        with lock:
            out.append(text)

    reader = ConsoleReader(r, None, emit)  # no UART behind it: nothing to flush
    try:
        os.write(w, data)
        deadline = time.monotonic() + 5
        while sum(len(t.encode()) for t in out) < len(data) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        reader.stop()
        os.close(w)
        os.close(r)
    return out


def test_whole_lines_and_a_partial_one() -> None:
    assert read_all(b"one\ntwo\nprompt> ") == ["one\n", "two\n", "prompt> "]


def test_a_guest_without_newlines_is_cut_into_bounded_pieces() -> None:
    out = read_all(b"x" * (3 * LINE_MAX + 10))
    assert all(len(t) <= LINE_MAX for t in out)
    assert "".join(out) == "x" * (3 * LINE_MAX + 10)


def test_an_overlong_line_keeps_its_newline_at_the_end() -> None:
    out = read_all(b"y" * (LINE_MAX + 5) + b"\nz\n")
    assert out[-1] == "z\n" and out[-2].endswith("y\n") and all(len(t) <= LINE_MAX + 1 for t in out)


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet=st.sampled_from("aé€😀\n"), min_size=1, max_size=3 * LINE_MAX))
def test_pieces_never_split_a_character(text: str) -> None:
    out = read_all(text.encode())
    assert "".join(out) == text
    assert all(len(t.encode()) <= LINE_MAX + 1 for t in out)
