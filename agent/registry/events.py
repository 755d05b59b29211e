"""The agent's event bus: per-VM rings of serialized Events (fed by runners, in their sequence order) and watchers.

Fan-out costs once per event: `publish` serializes an Event once and every watcher gets the same bytes (the gRPC
handler sends them as they are). A watcher's pending events wait in its own bounded buffer; when it wakes it takes
the whole backlog at once (a batch), so a watcher that fell behind costs one wakeup per batch, not one per event.
A watcher subscribes before it replays, so nothing falls between replay and live events; a watcher that does not
read is cut off once its buffer is full, so the agent's memory does not grow with slow watchers.

Each event is also kept framed as one `events` entry of an EventBatch (its field tag, its length, its bytes): an
EventBatch of any events is the concatenation of theirs, so WatchEventBatches sends a batch without serializing it.
A batch watcher may linger after each batch it sends (`linger`: first, most): what arrives meanwhile goes in its
next one, so a stream costs at most one message per linger however many events flow, and nothing while it keeps up
with a trickle. While its batches keep holding more than one event (a busy stream), each linger doubles from `first`
up to `most`; a batch of one event brings it back to `first`. Under sustained load a stream sends one message per
`most`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import NamedTuple, cast

from google.protobuf.timestamp_pb2 import Timestamp
from kvmplat.agent.errors import ResourceExhausted
from kvmplat.agent.registry.lifecycle import State, proto_value
from kvmplat.agent.runner.wire import ConsoleText, RunnerEvent, StateChange
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["RING", "WATCH_BUFFER", "Bus", "Stored", "event_from_runner", "framed"]

RING = 4096
WATCH_BUFFER = 4096


class Stored(NamedTuple):
    """One event as the bus keeps it: its VM, sequence number and wire bytes (a serialized pb.Event), and the same
    bytes framed as an entry of EventBatch.events."""

    vm: str
    seq: int
    data: bytes
    framed: bytes


_EVENTS_TAG = b"\x0a"  # EventBatch.events: field 1, length-delimited


def framed(data: bytes) -> bytes:
    """A serialized Event as one entry of a serialized EventBatch (tag, varint length, bytes)."""
    n, head = len(data), bytearray(_EVENTS_TAG)
    while n > 0x7F:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + data


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
    """One follow stream's pending events, and the future its reader sleeps on while there are none."""

    __slots__ = ("ended", "overflowed", "pending", "vm", "waiter")

    def __init__(self, vm: str) -> None:
        self.vm = vm
        self.pending: deque[Stored] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.overflowed = False
        self.ended = False  # its VM was destroyed

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def take(self) -> list[Stored]:
        """Everything pending (waits while nothing is)."""
        while not self.pending and not self.ended and not self.overflowed:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        batch = list(self.pending)
        self.pending.clear()
        return batch


class Bus:
    """Keeps each VM's recent events (serialized once) and fans them out to watchers."""

    def __init__(self) -> None:
        self._rings: dict[str, deque[Stored]] = {}
        self._watchers: dict[str, set[_Watcher]] = {}  # by VM name; "" for those watching every VM

    def publish(self, ev: pb.Event) -> None:
        """Records an event and hands its bytes to every watcher of its VM (and of every VM)."""
        data = ev.SerializeToString()
        item = Stored(ev.vm, ev.seq, data, framed(data))
        self._rings.setdefault(ev.vm, deque(maxlen=RING)).append(item)
        for key in ("", ev.vm) if ev.vm else ("",):
            for w in list(self._watchers.get(key, ())):
                if len(w.pending) >= WATCH_BUFFER:
                    w.overflowed = True  # cut off: it stopped reading
                    self._unsubscribe(w)
                else:
                    w.pending.append(item)
                w.wake()

    def forget(self, vm: str) -> None:
        """Drops a destroyed VM's events and ends the streams that watch only it."""
        self._rings.pop(vm, None)
        for w in self._watchers.pop(vm, set()) if vm else ():
            w.ended = True
            w.wake()

    def watcher_count(self) -> int:
        """How many streams are open."""
        return sum(len(ws) for ws in self._watchers.values())

    def _unsubscribe(self, w: _Watcher) -> None:
        ws = self._watchers.get(w.vm)
        if ws is not None:
            ws.discard(w)
            if not ws:
                del self._watchers[w.vm]

    def _replay(self, vm: str, since: int, seen: dict[str, int], as_framed: bool) -> list[bytes]:
        out = []
        for name, ring in list(self._rings.items()):
            if vm in ("", name):
                for item in ring:
                    if item.seq > since:
                        seen[name] = item.seq
                        out.append(item.framed if as_framed else item.data)
        return out

    async def watch(
        self, vm: str, since: int, follow: bool, as_framed: bool = False, linger: tuple[float, float] = (0.0, 0.0)
    ) -> AsyncIterator[list[bytes]]:
        """Batches of serialized Events of `vm` (all VMs when empty) after `since`, then live ones while `follow`;
        each VM's events in sequence order, none twice. `as_framed`: each as an EventBatch entry (`framed`);
        `linger`: (first, most) seconds to wait after each batch, gathering the next, doubling from `first` after each
        batch of more than one event up to `most` (see the module's docstring)."""
        first, most = linger[0], max(linger)
        w = _Watcher(vm)
        if follow:
            self._watchers.setdefault(vm, set()).add(w)
        try:
            seen: dict[str, int] = {}
            replay = self._replay(vm, since, seen, as_framed)
            if replay:
                yield replay
                await _linger(first)
            wait = first
            while follow:
                batch = _fresh(await w.take(), since, seen, as_framed)
                if batch:
                    yield batch
                    await _linger(wait)
                    wait = min(2 * wait, most) if len(batch) > 1 else first
                if w.ended and not w.pending:
                    return
                if w.overflowed and not w.pending:
                    raise ResourceExhausted(
                        f"event watcher cut off: it fell {WATCH_BUFFER} events behind; watch again with since_seq "
                        "set to the last sequence number received (events older than the ring are gone)"
                    )
        finally:
            self._unsubscribe(w)


async def _linger(seconds: float) -> None:
    if seconds:
        await asyncio.sleep(seconds)


def _fresh(items: list[Stored], since: int, seen: dict[str, int], as_framed: bool) -> list[bytes]:
    """The bytes of the items past `since` and past what was already sent of their VM (the replay's overlap)."""
    out = []
    for i in items:
        if i.seq > since and i.seq > seen.get(i.vm, 0):
            seen[i.vm] = i.seq
            out.append(i.framed if as_framed else i.data)
    return out
