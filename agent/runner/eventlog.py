"""A VM's events with their per-VM sequence numbers (1, 2, ...), kept in a bounded ring for replay."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from kvmplat.agent.runner.wire import ConsoleText, ExitReport, RunnerEvent, StateChange

__all__ = ["EventLog"]

RING = 4096


class EventLog:
    """Assigns sequence numbers, keeps the last RING events and hands each to the current listener."""

    def __init__(self, first_seq: int = 1, listener: Callable[[RunnerEvent], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._ring: deque[RunnerEvent] = deque(maxlen=RING)
        self._next = first_seq
        self.listener = listener

    def emit(self, body: StateChange | ConsoleText | ExitReport) -> RunnerEvent:
        """Records one event (a state change, console text or the guest's end) and passes it to the listener."""
        with self._lock:
            event = RunnerEvent(self._next, time.time(), body)
            self._next += 1
            self._ring.append(event)
            listener = self.listener
            if listener is not None:
                listener(event)  # under the lock, so listeners see events in sequence order
        return event

    def renumber(self, first_seq: int) -> None:
        """Makes `first_seq` the next number (an incoming VM continues its source's sequence); only before any event."""
        with self._lock:
            if self._ring:
                raise ValueError("events were emitted already")
            self._next = first_seq

    def attach(self, listener: Callable[[RunnerEvent], None] | None, since: int) -> None:
        """Replays the ring after `since` to `listener`, then makes it the listener: one step, no gap, no reorder."""
        with self._lock:
            if listener is not None:
                for e in self._ring:
                    if e.seq > since:
                        listener(e)
            self.listener = listener

    def since(self, seq: int) -> list[RunnerEvent]:
        """Events with a sequence number above `seq` still in the ring."""
        with self._lock:
            return [e for e in self._ring if e.seq > seq]

    @property
    def last_seq(self) -> int:
        """The sequence number of the latest event (0 when none)."""
        return self._next - 1
