"""Kernel panics seen on the console: the panic line and the last console lines, for a CRASHED end.

A Linux guest that panics prints "Kernel panic - not syncing: ..." and then, with `panic=-1` (kvmplat's default
command line), reboots at once, which with `reboot=t` is a triple fault: a reset that follows a panic is a crash,
not a guest reset. Without `panic=-1` the kernel spins forever, so the runner also ends the VM a grace period after
the panic line (PANIC_GRACE_S).
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["KEEP_LINES", "PANIC_GRACE_S", "PANIC_MARK", "PanicWatch"]

PANIC_MARK = "Kernel panic - not syncing"
KEEP_LINES = 20
PANIC_GRACE_S = 5.0


class PanicWatch:
    """Keeps the last console lines and notes the first panic line (thread-safe: fed by the console thread)."""

    def __init__(self, keep: int = KEEP_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.panic = ""

    def feed(self, text: str) -> bool:
        """Records one console line; True when it is the guest's first panic line."""
        with self._lock:
            self._lines.append(text.rstrip("\r\n"))
            if self.panic or PANIC_MARK not in text:
                return False
            self.panic = text[text.index(PANIC_MARK) :].strip()
            return True

    def lines(self) -> list[str]:
        """The last console lines, oldest first."""
        with self._lock:
            return list(self._lines)

    def reason(self) -> str:
        """The one-line reason of a panic crash ("" before any panic)."""
        return f"kernel panic: {self.panic}" if self.panic else ""

    def detail(self) -> str:
        """The reason followed by the last console lines, for the exit event."""
        return self.reason() + "\nlast console lines:\n" + "\n".join(self.lines())
