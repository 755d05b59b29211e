"""What a runner sends its agent over one connection: replies and events, in the order they were made.

The connection's reader answers each request itself: it sends what is queued (the events the request made, such
as its state change) and its answer in one write, so a request costs no thread switch in the runner and one read in
the agent. Events other threads emit (a vCPU's exit, console lines) wake the writer thread, which sends whatever
has gathered by then in one write. A full queue means the agent stopped reading: events past OUTBOUND_MAX are
dropped (they stay in the VM's ring, and the next hello replays them).
"""

from __future__ import annotations

import socket
import threading
from collections import deque

from kvmplat.agent.runner.wire import Reply, RunnerEvent, encode

__all__ = ["OUTBOUND_MAX", "Outbox"]

OUTBOUND_MAX = 65536  # messages queued for a slow agent before its events are dropped


class Outbox:
    """The messages waiting for one agent connection, and the lock that keeps their writes whole and in order."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._queue: deque[Reply | RunnerEvent] = deque()
        self._cv = threading.Condition()
        self._sending = threading.Lock()
        self._answering: int | None = None  # the reader thread while it answers: it sends what it queues itself
        self._closed = False

    def put(self, msg: RunnerEvent) -> None:
        """Queues an event (from any thread); the writer thread sends it unless the reader is about to."""
        with self._cv:
            if len(self._queue) >= OUTBOUND_MAX:
                return
            self._queue.append(msg)
            if self._answering != threading.get_ident():
                self._cv.notify()

    def begin_answer(self) -> None:
        """The calling thread (the reader) answers a request now: what it queues waits for its `answer`."""
        self._answering = threading.get_ident()

    def answer(self, reply: Reply) -> None:
        """Sends what is queued, then `reply`, in one write (the reader's thread); OSError when the agent is gone."""
        with self._cv:
            self._queue.append(reply)
            self._answering = None
        self._flush()

    def run_writer(self) -> None:
        """The writer thread: sends what others queue until `close`, and what is left then."""
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
            try:
                self._flush()
            except OSError:
                return

    def close(self) -> None:
        """Ends the writer thread once the queue is sent."""
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _flush(self) -> None:
        with self._sending:
            with self._cv:
                batch = list(self._queue)
                self._queue.clear()
            if batch:
                self._conn.sendall(b"".join(encode(m) for m in batch))
