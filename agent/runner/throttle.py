"""Auto-converge for live migration: a guest that dirties memory faster than it can be sent is slowed down by holding
its vCPUs paused for a share of every period (QEMU's cpu-throttle: a 10 ms run slice, then a pause of
slice * p / (100 - p)), through the vCPU threads' own pause and kick.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from kvmplat.agent.runner.vcpu import Mode, VcpuThread

__all__ = ["SLICE_S", "Throttle"]

SLICE_S = 0.01  # the guest runs this long between two pauses


class Throttle:
    """Holds `threads` paused `percent` % of the time until `end()`; then they run as before."""

    def __init__(self, threads: Sequence[VcpuThread]) -> None:
        self._threads = list(threads)
        self.percent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, percent: int) -> None:
        """Changes the share of time paused (0..99); starts the throttling thread the first time."""
        self.percent = max(0, min(99, int(percent)))
        if self._thread is None and self.percent:
            self._thread = threading.Thread(target=self._main, name="throttle", daemon=True)
            self._thread.start()

    def end(self, resume: bool) -> None:
        """Stops throttling (idempotent); with `resume` the vCPUs are left running, else as the last period left
        them (the caller parks them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if resume:
            self._mode(Mode.RUN)

    def _mode(self, mode: Mode) -> None:
        for t in self._threads:
            t.set_mode(mode)

    def _main(self) -> None:
        while not self._stop.is_set():
            p = self.percent
            if p:
                self._mode(Mode.PAUSE)
                if self._stop.wait(SLICE_S * p / (100 - p)):
                    return
                self._mode(Mode.RUN)
            self._stop.wait(SLICE_S)
