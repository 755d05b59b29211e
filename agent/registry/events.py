"""The agent's event bus: per-VM rings of proto Events (fed by runners, in their sequence order) and watchers.

A watcher subscribes before it replays, so nothing falls between replay and live events; a watcher that does not
read is cut off once its bounded queue is full, so the agent's memory does not grow with slow watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp
from kvmplat.agent.errors import ResourceExhausted
from kvmplat.agent.registry.lifecycle import State, proto_value
from kvmplat.agent.runner.wire import ConsoleText, RunnerEvent, StateChange
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["RING", "WATCH_BUFFER", "Bus", "event_from_runner"]

RING = 4096
WATCH_BUFFER = 4096
_END = None


def event_from_runner(vm: str, e: RunnerEvent) -> pb.Event:
    """A runner's event as a proto Event."""
    ts = Timestamp()
    ts.FromNanoseconds(int(e.time * 1e9))
    ev = pb.Event(seq=e.seq, vm=vm, time=ts)
    body = e.body
    if isinstance(body, StateChange):
        ev.state.CopyFrom(pb.StateChange(reason=body.reason))
        setattr(ev.state, "from", _state_value(body.old))
        ev.state.to = _state_value(body.new)
    elif isinstance(body, ConsoleText):
        ev.console.text = body.text
    else:
        ev.exit.reason, ev.exit.vcpu, ev.exit.detail = body.reason, body.vcpu, body.detail
        ev.exit.registers.update(body.registers)
        ev.exit.instruction = bytes.fromhex(body.instruction)
    return ev


def _state_value(name: str) -> pb.VmState:
    return cast(pb.VmState, proto_value(State[name]) if name in State.__members__ else pb.VM_STATE_UNSPECIFIED)


class _Watcher:
    def __init__(self, vm: str) -> None:
        self.vm = vm
        self.queue: asyncio.Queue[pb.Event | None] = asyncio.Queue(WATCH_BUFFER)
        self.overflowed = False


class Bus:
    """Keeps each VM's recent events and fans them out to watchers."""

    def __init__(self) -> None:
        self._rings: dict[str, deque[pb.Event]] = {}
        self._watchers: set[_Watcher] = set()

    def publish(self, ev: pb.Event) -> None:
        """Records an event and hands it to every watcher of its VM."""
        self._rings.setdefault(ev.vm, deque(maxlen=RING)).append(ev)
        for w in list(self._watchers):
            if w.vm in ("", ev.vm) and not w.overflowed:
                try:
                    w.queue.put_nowait(ev)
                except asyncio.QueueFull:
                    w.overflowed = True  # cut off: it stopped reading
                    self._watchers.discard(w)

    def forget(self, vm: str) -> None:
        """Drops a destroyed VM's events and ends the streams that watch only it."""
        self._rings.pop(vm, None)
        for w in list(self._watchers):
            if w.vm == vm:
                with contextlib.suppress(asyncio.QueueFull):
                    w.queue.put_nowait(_END)
                self._watchers.discard(w)

    def watcher_count(self) -> int:
        """How many streams are open."""
        return len(self._watchers)

    async def watch(self, vm: str, since: int, follow: bool) -> AsyncIterator[pb.Event]:
        """Events of `vm` (all VMs when empty) after `since`, then live ones while `follow`."""
        w = _Watcher(vm)
        if follow:
            self._watchers.add(w)
        try:
            seen: dict[str, int] = {}
            for name, ring in list(self._rings.items()):
                if vm in ("", name):
                    for ev in list(ring):
                        if ev.seq > since:
                            seen[name] = ev.seq
                            yield ev
            while follow:
                live = await w.queue.get()
                if live is None:
                    return
                ev = live
                if ev.seq > max(since, seen.get(ev.vm, 0)):
                    seen[ev.vm] = ev.seq
                    yield ev
                if w.overflowed and w.queue.empty():
                    raise ResourceExhausted(
                        f"event watcher cut off: it fell {WATCH_BUFFER} events behind; watch again with since_seq "
                        "set to the last sequence number received (events older than the ring are gone)"
                    )
        finally:
            self._watchers.discard(w)
