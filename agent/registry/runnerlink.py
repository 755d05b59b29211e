"""The agent's side of the runner channels (asyncio): the template that forks runners, and one runner's socket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import Callable
from typing import Any

from kvmplat.agent import errors
from kvmplat.agent.registry.strays import template_argv
from kvmplat.agent.runner.wire import MAX_LINE, decode, encode

__all__ = ["RunnerClient", "RunnerLost", "TemplateClient"]


class RunnerLost(errors.Unavailable):
    """The runner's connection closed: it exited or was killed."""


def _error(err: dict[str, Any]) -> errors.KvmplatError:
    """Rebuilds an error the runner reported by its class name (HostError when unknown)."""
    cls = getattr(errors, str(err.get("kind")), None)
    message = str(err.get("message", "runner error"))
    if (
        isinstance(cls, type)
        and issubclass(cls, errors.KvmplatError)
        and cls not in (errors.InvalidArgument, errors.PlatformRefused, errors.KvmError)
    ):
        return cls(message)
    if cls is errors.InvalidArgument:
        return errors.InvalidArgument(message)
    if cls is errors.PlatformRefused:
        return errors.FailedPrecondition(message)
    return errors.HostError(message)


class TemplateClient:
    """The runner template process; spawns overlap (each answered by id once its runner listens)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def start(cls, state_dir: str) -> TemplateClient:
        """Starts the template as a fresh interpreter (exec, not a fork of this gRPC process); its command line names
        the state directory, so a later agent can tell its runners (see strays.py)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *template_argv(state_dir),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=MAX_LINE,
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        """The template's pid."""
        return int(self._proc.pid)

    async def spawn(self, config: dict[str, Any]) -> int:
        """Forks a runner for `config`; returns its pid once it listens on its socket."""
        assert self._proc.stdin is not None
        if self._task.done():
            raise errors.HostError("the runner template exited; restart the agent")
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._proc.stdin.write(encode({"op": "spawn", "id": rid, "config": config}))
            await self._proc.stdin.drain()
            reply = await fut
        except (OSError, ConnectionError):
            raise errors.HostError("the runner template exited; restart the agent") from None
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            raise _error(reply.get("error", {}))
        return int(reply["pid"])

    async def _read_loop(self) -> None:
        assert self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                reply = decode(line)
                fut = self._pending.get(reply.get("id", -1))
                if fut is not None and not fut.done():
                    fut.set_result(reply)
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(errors.HostError("the runner template exited; restart the agent"))

    async def close(self) -> None:
        """Ends the template (its runners live on)."""
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
        on_event: Callable[[dict[str, Any]], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._reader, self._writer = reader, writer
        self._on_event, self._on_lost = on_event, on_lost
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self.closed = False

    @classmethod
    async def connect(
        cls, path: str, on_event: Callable[[dict[str, Any]], None], on_lost: Callable[[], None]
    ) -> RunnerClient:
        """Connects to a runner's socket."""
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
        except OSError as e:
            raise RunnerLost(f"cannot reach the runner at {path}: {e.strerror}") from None
        return cls(reader, writer, on_event, on_lost)

    async def call(self, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        """Sends one request and waits for its answer; raises the runner's error."""
        if self.closed:
            raise RunnerLost("the runner is gone")
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:  # a hung runner (stopped, stuck in an ioctl) costs this call `timeout`, never the agent
            self._writer.write(encode({"id": rid, "op": op, **args}))
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
        if not reply.get("ok"):
            raise _error(reply.get("error", {}))
        return dict(reply.get("result", {}))

    async def _read_loop(self) -> None:
        try:
            while line := await self._reader.readline():
                msg = decode(line)
                if "event" in msg:
                    self._on_event(msg["event"])
                elif (fut := self._pending.get(msg.get("id", -1))) is not None and not fut.done():
                    fut.set_result(msg)
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self.closed = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(RunnerLost("the runner closed its connection"))
            self._on_lost()

    async def close(self) -> None:
        """Closes the connection (the runner keeps running)."""
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
