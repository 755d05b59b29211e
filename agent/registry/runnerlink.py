"""The agent's side of the runner channels (asyncio): the template that forks runners, and one runner's socket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from kvmplat.agent import errors
from kvmplat.agent.registry.lifecycle import Event
from kvmplat.agent.registry.spares import HELLO_ID, ReadySpare, SparePool, Started, Streams
from kvmplat.agent.registry.strays import template_argv
from kvmplat.agent.runner import wire
from kvmplat.agent.runner.wire import MAX_LINE, RunnerConfig, RunnerEvent

__all__ = ["MOVE_TIMEOUT", "RunnerClient", "RunnerLost", "TemplateClient"]

MOVE_TIMEOUT = 30.0  # a move op copies or loads a whole machine state


class RunnerLost(errors.Unavailable):
    """The runner's connection closed: it exited or was killed."""


_T = TypeVar("_T")


def _expect(msg: object, cls: type[_T]) -> _T:
    """The message if it is a `cls`; a Failure as the agent's error; anything else as HostError."""
    if isinstance(msg, cls):
        return msg
    if isinstance(msg, wire.Failure):
        raise wire.error_of(msg)
    raise errors.HostError(f"the runner answered {type(msg).__name__} where {cls.__name__} was expected")


class TemplateClient:
    """The runner template process: a spawn takes a ready spare runner (registry/spares.py), else the template forks
    one; spawns overlap (each answered by id once its runner listens)."""

    def __init__(self, proc: asyncio.subprocess.Process, spares: SparePool) -> None:
        self._proc = proc
        self.spares = spares
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[wire.Spawned | wire.Failure]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def start(cls, state_dir: str) -> TemplateClient:
        """Starts the template as a fresh interpreter (exec, not a fork of this gRPC process); its command line names
        the state directory, so a later agent can tell its runners (see strays.py). Its ready spares come on a socket
        of their own (wire.LINK_ENV names its fd in the template)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *template_argv(state_dir),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=MAX_LINE,
                pass_fds=(theirs.fileno(),),
                env={**os.environ, wire.LINK_ENV: str(theirs.fileno())},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(proc, SparePool(ours))

    @property
    def pid(self) -> int:
        """The template's pid."""
        return int(self._proc.pid)

    async def spawn(self, config: RunnerConfig, taken: Callable[[int], None] | None = None) -> Started:
        """A runner for `config`, once it listens on its socket: a spare handed the config (`taken` is told its pid
        first), else a fork."""
        spare = await self.spares.take(config)
        started = None
        if spare is not None:
            if taken is not None:
                taken(spare.pid)
            started = await self._hand(spare, config)
        if started is None:
            started = Started(await self._fork(config))
        if not config.incoming:
            self.spares.hinted()
        return started

    @staticmethod
    async def _hand(spare: ReadySpare, config: RunnerConfig) -> Started | None:
        """Gives `spare` its config, with the hello behind it (HELLO_ID); the runner once it listens, None when the
        spare was dead (or died as it was handed its config: then a runner is forked after all), or the error that
        stopped it."""
        reader, writer = spare.streams
        hello = wire.Call(HELLO_ID, "hello", since=config.first_seq - 1)  # the runner's ring starts at first_seq
        try:
            writer.write(wire.encode(wire.Spawn(config)) + wire.encode(hello))
            line = await reader.readline()
        except (OSError, ValueError, asyncio.LimitOverrunError):
            line = b""
        if not line:
            writer.close()
            return None
        try:
            answer = wire.decode(line)
        except ValueError as e:
            answer = wire.failure_of(errors.HostError(f"the spare's answer: {e}"))
        if not isinstance(answer, wire.Spawned):
            writer.close()
        return Started(_expect(answer, wire.Spawned).pid, spare.streams)

    async def _fork(self, config: RunnerConfig) -> int:
        """Has the template fork a runner for `config`; its pid once it listens."""
        assert self._proc.stdin is not None
        if self._task.done():
            raise errors.HostError("the runner template exited; restart the agent")
        rid = next(self._ids)
        fut: asyncio.Future[wire.Spawned | wire.Failure] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._proc.stdin.write(wire.encode(wire.Spawn(config, rid)))
            await self._proc.stdin.drain()
            answer = await fut
        except (OSError, ConnectionError):
            raise errors.HostError("the runner template exited; restart the agent") from None
        finally:
            self._pending.pop(rid, None)
        return _expect(answer, wire.Spawned).pid

    async def _read_loop(self) -> None:
        assert self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                reply = wire.decode(line)
                fut = self._pending.get(reply.id) if isinstance(reply, wire.SpawnReply) else None
                if fut is not None and not fut.done():
                    fut.set_result(reply.answer)
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(errors.HostError("the runner template exited; restart the agent"))

    async def close(self) -> None:
        """Ends the template and its spares (its runners live on)."""
        self.spares.close()
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        with contextlib.suppress(ProcessLookupError, asyncio.TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 2.0)
        self._task.cancel()


class RunnerClient:
    """One connection to one runner: calls by id, events in sequence order to `on_event`, loss to `on_lost`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_event: Callable[[RunnerEvent], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._reader, self._writer = reader, writer
        self._on_event, self._on_lost = on_event, on_lost
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[wire.Reply]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self.closed = False

    @classmethod
    async def connect(
        cls,
        path: str,
        on_event: Callable[[RunnerEvent], None],
        on_lost: Callable[[], None],
        streams: Streams | None = None,
    ) -> RunnerClient:
        """Connects to a runner's socket (or takes `streams`, the connection a spare answered its spawn on)."""
        if streams is None:
            try:
                streams = await asyncio.open_unix_connection(path, limit=MAX_LINE)
            except OSError as e:
                raise RunnerLost(f"cannot reach the runner at {path}: {e.strerror}") from None
        return cls(*streams, on_event, on_lost)

    async def hello(self, since: int, sent: bool = False) -> wire.Hello:
        """Greets the runner: its state now, then its events after `since` (to `on_event`); with `sent`, the hello
        went with a spare's config (spares.HELLO_ID) and only its answer is awaited."""
        return _expect(await self._call("hello", since=since, sent=sent), wire.Hello)

    async def request(self, event: Event, timeout: float = 10.0) -> wire.StateReply:
        """A lifecycle request (start, pause, resume, stop, destroy); the state after it."""
        return _expect(await self._call(event.value, timeout), wire.StateReply)

    async def stats(self, timeout: float = 2.0) -> wire.RunnerStats:
        """The runner's counters."""
        return _expect(await self._call("stats", timeout), wire.RunnerStats)

    async def console(self, data: bytes) -> int:
        """Bytes typed at the guest's console; how many the UART took."""
        return _expect(await self._call("console", data=base64.b64encode(data).decode()), wire.Accepted).count

    async def memory(self) -> wire.MemoryFd:
        """Where guest memory is (the runner's memfd) and the exact CPUID table the guest has."""
        return _expect(await self._call("memory"), wire.MemoryFd)

    async def freeze(self) -> wire.Frozen:
        """A PAUSED VM's machine state."""
        return _expect(await self._call("freeze", MOVE_TIMEOUT), wire.Frozen)

    async def migrate_begin(self, target: str) -> wire.StateReply:
        """RUNNING -> MIGRATING to `target`: dirty logging on, the guest keeps running."""
        return _expect(await self._call("migrate_begin", MOVE_TIMEOUT, args=wire.Note(target)), wire.StateReply)

    async def dirty(self) -> wire.DirtyPages:
        """The pages written since the last call."""
        return _expect(await self._call("dirty", MOVE_TIMEOUT), wire.DirtyPages)

    async def throttle(self, percent: int) -> wire.StateReply:
        """Auto-converge: holds the migrating guest's vCPUs paused `percent` % of each period."""
        return _expect(await self._call("throttle", MOVE_TIMEOUT, args=wire.ThrottleTo(percent)), wire.StateReply)

    async def migrate_stop(self) -> wire.FinalCopy:
        """Stops the guest for the final copy."""
        return _expect(await self._call("migrate_stop", MOVE_TIMEOUT), wire.FinalCopy)

    async def migrate_abort(self, why: str) -> wire.StateReply:
        """MIGRATING -> RUNNING: the guest runs on here."""
        return _expect(await self._call("migrate_abort", MOVE_TIMEOUT, args=wire.Note(why)), wire.StateReply)

    async def migrate_done(self, target: str) -> wire.StateReply:
        """MIGRATING -> STOPPED: `target` runs the VM now."""
        return _expect(await self._call("migrate_done", MOVE_TIMEOUT, args=wire.Note(target)), wire.StateReply)

    async def load(self, state: dict[str, Any], milestones: dict[str, float]) -> wire.Loaded:
        """Loads a frozen machine state into this incoming VM."""
        return _expect(await self._call("load", MOVE_TIMEOUT, args=wire.LoadState(state, milestones)), wire.Loaded)

    async def arrive(self, first_seq: int, paused: bool, reason: str) -> wire.Arrived:
        """The incoming VM runs (or stays PAUSED); its first event is numbered `first_seq`."""
        arrival = wire.Arrival(first_seq, paused, reason)
        return _expect(await self._call("arrive", MOVE_TIMEOUT, args=arrival), wire.Arrived)

    async def _call(
        self,
        op: str,
        timeout: float = 10.0,
        since: int = 0,
        data: str = "",
        args: wire.Args | None = None,
        sent: bool = False,
    ) -> object:
        """Sends one request (unless it was `sent` as HELLO_ID) and waits for its answer: the result, or the runner's
        Failure."""
        if self.closed:
            raise RunnerLost("the runner is gone")
        rid = HELLO_ID if sent else next(self._ids)
        fut: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:  # a hung runner (stopped, stuck in an ioctl) costs this call `timeout`, never the agent
            if not sent:
                self._writer.write(wire.encode(wire.Call(rid, op, since, data, args)))
                await asyncio.wait_for(self._writer.drain(), timeout)
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:  # before OSError: TimeoutError is one
            raise errors.Unavailable(
                f"the runner did not answer {op!r} within {timeout:g} s (it may still act on it)"
            ) from None
        except (OSError, ConnectionError):
            raise RunnerLost("the runner closed its connection") from None
        finally:
            self._pending.pop(rid, None)
        return reply.error or reply.result

    async def _read_loop(self) -> None:
        try:
            while line := await self._reader.readline():
                msg = wire.decode(line)
                if isinstance(msg, RunnerEvent):
                    self._on_event(msg)
                elif isinstance(msg, wire.Reply) and (fut := self._pending.get(msg.id)) is not None and not fut.done():
                    fut.set_result(msg)
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self.closed = True
            self._writer.close()  # the socket now, not when this client is collected (an EOF leaves it open)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(RunnerLost("the runner closed its connection"))
            self._on_lost()

    async def close(self) -> None:
        """Closes the connection (the runner keeps running)."""
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
