"""The agent's spare runners (runner/template.py): the template passes each ready spare on with the agent's end of a
socket pair to it; a spawn hands a spare its config there, with the agent's hello right behind it (HELLO_ID), and
the spare answers both there, on what is then the agent's first connection to the new runner: one round trip to one
process (no relay through the template, no connect, no second round trip for the greeting)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from dataclasses import dataclass

from kvmplat.agent.runner import wire
from kvmplat.agent.runner.wire import MAX_LINE, RunnerConfig

__all__ = ["HELLO_ID", "SPARE_WAIT", "ReadySpare", "SparePool", "Started", "Streams"]

SPARE_WAIT = 0.05  # seconds a spawn waits for the next spare before the template forks its runner instead
HELLO_ID = 0  # the id of the hello sent with a spare's config (a RunnerClient numbers its own calls from 1)
ANNOUNCE_MAX = 1 << 18  # bytes of one SpareReady (its hint is a RunnerConfig, a few KiB; a packet cannot pass ~200)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class Started:
    """A runner listening on its socket; `streams`: the connection a spare answered on, where the answer to its hello
    (HELLO_ID, since its config's first_seq - 1) follows (None: connect to it and say hello)."""

    pid: int
    streams: Streams | None = None


@dataclass
class ReadySpare:
    """A spare passed on by the template: its pid, the shape it built ahead, the agent's connection to it."""

    pid: int
    shape: RunnerConfig | None  # the shape of the machine it built ahead (RunnerConfig.shape); None: none
    streams: Streams


class SparePool:
    """Ready spares, as the template passes them on `link` (SOCK_SEQPACKET: SpareReady with one fd each)."""

    def __init__(self, link: socket.socket) -> None:
        self._link = link
        self._loop = asyncio.get_running_loop()
        self._ready: deque[ReadySpare] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._hinted = False  # a VM was asked for: the template forks spares with its machine built ahead
        self.closed = False
        link.setblocking(False)
        self._loop.add_reader(link, self._on_link)

    def _on_link(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self._link, ANNOUNCE_MAX, 1, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        socks = [socket.socket(fileno=fd) for fd in fds]
        if not data:
            self.close()  # the template is gone
            return
        try:
            msg = wire.decode(data)
        except ValueError:
            msg = None
        if not isinstance(msg, wire.SpareReady) or len(socks) != 1:
            for sock in socks:
                sock.close()
            return
        task = self._loop.create_task(self._add(msg, socks[0]))  # its streams made now, not while a spawn waits
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, msg: wire.SpareReady, sock: socket.socket) -> None:
        try:
            streams = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        except OSError:
            sock.close()
            return
        if self.closed or (self._hinted and msg.hint is None):
            streams[1].close()  # a spare with nothing built ahead, forked before the first VM: one with it follows
            return
        self._ready.append(ReadySpare(msg.pid, None if msg.hint is None else msg.hint.shape(), streams))
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def take(self, config: RunnerConfig) -> ReadySpare | None:
        """A ready spare for `config` (the oldest of those that built its shape ahead, else the oldest), waiting at
        most SPARE_WAIT for the next one when none is ready (the template forks new ones as spares are taken); None
        when none came."""
        if not self._ready and not self.closed:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, SPARE_WAIT)
        if not self._ready:
            return None
        want = config.shape()
        spare = next((s for s in self._ready if s.shape == want), self._ready[0])
        self._ready.remove(spare)
        return spare

    def hinted(self) -> None:
        """A VM was asked for (its runner listens): the template now forks spares with its machine built ahead, so
        the spares forked before with nothing built are dropped (each ends, and the template forks one in its place).
        Not before: the spare's word of its config reaches the template before the drop does. Once is enough: blank
        spares that arrive later are dropped as they arrive."""
        if self._hinted:
            return
        self._hinted = True
        for spare in [s for s in self._ready if s.shape is None]:
            self._ready.remove(spare)
            spare.streams[1].close()

    def close(self) -> None:
        """Stops taking spares and drops the ready ones (each ends when its socket closes)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._link)
        self._link.close()
        while self._ready:
            self._ready.popleft().streams[1].close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
