"""agent/registry/events.py Bus: replay then live without gaps or repeats, slow watchers cut off at WATCH_BUFFER with
RESOURCE_EXHAUSTED (and able to resume from their last sequence number), memory bounded by RING and WATCH_BUFFER
whatever the watchers do, and fan-out that serializes each event once: every watcher gets the very same bytes, in
order, a backlog as one batch; framed for WatchEventBatches, each event is one entry of an EventBatch and a lingering
watcher gathers what comes meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kvmplat.agent.api.status import code_of
from kvmplat.agent.errors import ResourceExhausted
from kvmplat.agent.registry.events import RING, WATCH_BUFFER, Bus, event_from_runner, framed
from kvmplat.agent.runner.wire import ConsoleText, ExitReport, RunnerEvent, StateChange
from kvmplat.v1 import agent_pb2 as pb

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine on a fresh loop."""
    return asyncio.run(coro)


def publish(bus: Bus, vm: str, seqs: range) -> None:
    """Publishes console events with these sequence numbers."""
    for s in seqs:
        bus.publish(pb.Event(seq=s, vm=vm, console=pb.ConsoleText(text=f"line {s}\n")))


class Events:
    """A bus stream read one decoded event at a time (the bus hands out batches of bytes)."""

    def __init__(self, batches: AsyncIterator[list[bytes]]) -> None:
        self.batches = batches
        self.buffered: list[bytes] = []

    def __aiter__(self) -> Events:
        return self

    async def __anext__(self) -> pb.Event:
        if not self.buffered:
            self.buffered = list(await anext(self.batches))
        return pb.Event.FromString(self.buffered.pop(0))

    async def aclose(self) -> None:
        """Ends the stream (the bus forgets the watcher)."""
        await self.batches.aclose()  # type: ignore[attr-defined]


def watch(bus: Bus, vm: str, since: int, follow: bool) -> Events:
    """A watch of `bus` read as events."""
    return Events(bus.watch(vm, since, follow))


async def take(stream: Events, n: int) -> list[int]:
    """Seqs of the next `n` events."""
    return [(await anext(stream)).seq for _ in range(n)]


def test_replay_then_live_without_gaps_or_repeats() -> None:
    async def main() -> list[int]:
        bus = Bus()
        publish(bus, "a", range(1, 6))
        stream = watch(bus, "a", 2, follow=True)
        got = await take(stream, 1)  # subscribed now, in the middle of the replay
        publish(bus, "a", range(6, 9))
        got += await take(stream, 5)
        publish(bus, "a", range(9, 12))
        got += await take(stream, 3)
        await stream.aclose()
        return got

    assert run(main()) == list(range(3, 12))


def test_watch_without_follow_replays_and_ends() -> None:
    async def main() -> list[int]:
        bus = Bus()
        publish(bus, "a", range(1, 4))
        publish(bus, "b", range(1, 3))
        return [e.seq async for e in watch(bus, "a", 1, follow=False)]

    assert run(main()) == [2, 3]


def test_watching_every_vm_applies_since_per_vm() -> None:
    async def main() -> list[tuple[str, int]]:
        bus = Bus()
        publish(bus, "a", range(1, 4))
        publish(bus, "b", range(1, 3))
        stream = watch(bus, "", 1, follow=True)
        out = [(e.vm, e.seq) for e in [await anext(stream) for _ in range(3)]]
        publish(bus, "b", range(3, 4))
        out.append(((e := await anext(stream)).vm, e.seq))
        await stream.aclose()
        return out

    assert run(main()) == [("a", 2), ("a", 3), ("b", 2), ("b", 3)]


def test_a_slow_watcher_is_cut_off_with_resource_exhausted() -> None:
    async def main() -> tuple[int, int, int]:
        bus = Bus()
        publish(bus, "a", range(1, 2))
        stream = watch(bus, "a", 0, follow=True)
        await take(stream, 1)
        publish(bus, "a", range(2, 2 + WATCH_BUFFER + 50))  # nobody reads
        watchers = bus.watcher_count()
        got = 0
        with pytest.raises(ResourceExhausted) as info:
            async for _ in stream:
                got += 1
        assert code_of(info.value).name == "RESOURCE_EXHAUSTED" and str(WATCH_BUFFER) in str(info.value)
        return watchers, got, bus.watcher_count()

    watchers, got, after = run(main())
    assert watchers == 0 and after == 0
    assert got == WATCH_BUFFER  # what was buffered is delivered, then the cut


def test_a_fast_watcher_is_not_cut_off_by_a_slow_one() -> None:
    async def main() -> list[int]:
        bus = Bus()
        slow = watch(bus, "a", 0, follow=True)
        fast = watch(bus, "a", 0, follow=True)
        publish(bus, "a", range(1, 2))
        await take(slow, 1)
        out = await take(fast, 1)
        for s in range(2, WATCH_BUFFER + 100):
            publish(bus, "a", range(s, s + 1))
            out += await take(fast, 1)
        await fast.aclose()
        await slow.aclose()
        return out

    assert run(main()) == list(range(1, WATCH_BUFFER + 100))


def test_memory_is_bounded_by_the_ring() -> None:
    async def main() -> list[int]:
        bus = Bus()
        publish(bus, "a", range(1, 3 * RING + 1))
        return [e.seq async for e in watch(bus, "a", 0, follow=False)]

    seqs = run(main())
    assert seqs == list(range(2 * RING + 1, 3 * RING + 1))


def test_forget_ends_the_streams_of_that_vm_only() -> None:
    async def main() -> tuple[list[int], int]:
        bus = Bus()
        publish(bus, "a", range(1, 3))
        stream = watch(bus, "a", 0, follow=True)
        other = watch(bus, "b", 0, follow=True)
        task = asyncio.ensure_future(anext(other))
        await asyncio.sleep(0)  # let it subscribe
        got = await take(stream, 2)
        bus.forget("a")
        got += [e.seq async for e in stream]
        remaining = bus.watcher_count()
        task.cancel()
        replay = [e.seq async for e in watch(bus, "a", 0, follow=False)]
        assert replay == []
        return got, remaining

    got, remaining = run(main())
    assert got == [1, 2] and remaining == 1


def test_event_from_runner_builds_each_kind() -> None:
    state = event_from_runner("v", RunnerEvent(1, 1.5, StateChange("CREATED", "RUNNING", "r")))
    assert state.state.to == pb.RUNNING and getattr(state.state, "from") == pb.CREATED and state.time.nanos == 5 * 10**8
    report = ExitReport("crash", 0, "d", registers={"rip": 16}, instruction="0f0b")
    exit_ = event_from_runner("v", RunnerEvent(2, 0.0, report))
    assert exit_.exit.registers["rip"] == 16 and exit_.exit.instruction == b"\x0f\x0b"
    assert event_from_runner("v", RunnerEvent(3, 0.0, ConsoleText("x"))).console.text == "x"
    unknown = event_from_runner("v", RunnerEvent(4, 0.0, StateChange("", "NONSENSE", "")))
    assert unknown.state.to == pb.VM_STATE_UNSPECIFIED


def test_every_watcher_gets_the_same_bytes_in_order() -> None:
    async def main() -> tuple[list[bytes], list[bytes], list[bytes]]:
        bus = Bus()
        streams = bus.watch("", 0, True), bus.watch("", 0, True), bus.watch("a", 0, True)
        firsts = [asyncio.ensure_future(anext(s)) for s in streams]
        await asyncio.sleep(0)  # all subscribed, waiting
        got: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        for s in range(1, 201):  # one sequence over both VMs: publish order is seq order
            publish(bus, "a" if s % 3 else "b", range(s, s + 1))
            if s % 7 == 0:  # read now and then: batches of varying length
                for stream, first, out in zip(streams, firsts, got, strict=True):
                    out.extend(await first if not out else await anext(stream))
        for stream, out in zip(streams, got, strict=True):
            out.extend(await anext(stream))  # the rest (197..200)
            await stream.aclose()  # type: ignore[attr-defined]
        return got

    every1, every2, only_a = run(main())
    assert len(every1) == 200 and all(x is y for x, y in zip(every1, every2, strict=True))  # serialized once
    assert [pb.Event.FromString(d).seq for d in every1] == list(range(1, 201))
    assert only_a == [d for d in every1 if pb.Event.FromString(d).vm == "a"]
    assert all(any(d is e for e in every1) for d in only_a)


def test_a_watcher_that_fell_behind_gets_its_backlog_as_one_batch() -> None:
    async def main() -> list[int]:
        bus = Bus()
        stream = bus.watch("a", 0, follow=True)
        publish(bus, "a", range(1, 2))
        first = await anext(stream)
        publish(bus, "a", range(2, 502))  # it does not read meanwhile
        backlog = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        return [len(first), len(backlog)]

    assert run(main()) == [1, 500]


def test_a_cut_off_watcher_resumes_from_its_last_sequence_number_without_a_gap() -> None:
    async def main() -> list[int]:
        bus = Bus()
        stream = watch(bus, "a", 0, follow=True)
        publish(bus, "a", range(1, 2))
        got = await take(stream, 1)
        publish(bus, "a", range(2, 2 + WATCH_BUFFER + 50))  # nobody reads: cut off
        with pytest.raises(ResourceExhausted):
            async for ev in stream:
                got.append(ev.seq)
        again = watch(bus, "a", got[-1], follow=True)  # as the error says: since_seq = the last one received
        publish(bus, "a", range(2 + WATCH_BUFFER + 50, 2 + WATCH_BUFFER + 60))
        got += await take(again, 60)
        await again.aclose()
        return got

    assert run(main()) == list(range(1, 2 + WATCH_BUFFER + 60))


@given(seq=st.integers(0, 2**64 - 1), vm=st.text(max_size=64), text=st.text(max_size=40000))
def test_a_framed_event_is_one_entry_of_an_event_batch(seq: int, vm: str, text: str) -> None:
    data = pb.Event(seq=seq, vm=vm, console=pb.ConsoleText(text=text)).SerializeToString()
    batch = pb.EventBatch.FromString(framed(data) * 2)  # lengths of every varint size up to 3 bytes
    assert [e.SerializeToString() for e in batch.events] == [data, data]


def test_framed_batches_carry_the_same_events_as_the_plain_stream() -> None:
    async def main() -> tuple[list[bytes], list[bytes]]:
        bus = Bus()
        publish(bus, "a", range(1, 4))
        publish(bus, "b", range(1, 300))  # console lines past 127 bytes of frame, and many of them
        bus.publish(pb.Event(seq=4, vm="a", console=pb.ConsoleText(text="x" * 20000)))
        plain = [d async for b in bus.watch("", 1, False) for d in b]
        batches = [b"".join(b) async for b in bus.watch("", 1, False, as_framed=True)]
        return plain, [e.SerializeToString() for b in batches for e in pb.EventBatch.FromString(b).events]

    plain, from_batches = run(main())
    assert len(plain) == 2 + 298 + 1 and from_batches == plain


async def _follow(stream: AsyncIterator[list[bytes]]) -> tuple[list[list[int]], asyncio.Future[None]]:
    """Reads a framed watch in a task of its own, once subscribed: each batch's sequence numbers, as they come."""
    got: list[list[int]] = []

    async def read() -> None:
        async for b in stream:
            got.append([e.seq for e in pb.EventBatch.FromString(b"".join(b)).events])

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0)  # subscribed
    return got, reader


def test_a_lingering_watcher_gets_what_came_meanwhile_in_one_batch() -> None:
    async def batches(linger: float) -> list[list[int]]:
        bus = Bus()
        got, reader = await _follow(bus.watch("a", 0, True, as_framed=True, linger=(linger, linger)))
        for s in range(1, 21):
            publish(bus, "a", range(s, s + 1))
            for _ in range(5):
                await asyncio.sleep(0)  # the reader runs whenever it can
        while sum(map(len, got)) < 20:
            await asyncio.sleep(0.01)
        reader.cancel()
        return got

    assert run(batches(0.0)) == [[s] for s in range(1, 21)]  # keeping up: each event as it comes
    assert run(batches(0.5)) == [[1], list(range(2, 21))]  # the first at once, the rest after the linger


def test_a_busy_watcher_lingers_longer_and_a_quiet_one_is_back_to_the_first_linger() -> None:
    async def batches(linger: float, linger_max: float) -> list[list[int]]:
        bus = Bus()
        got, reader = await _follow(bus.watch("a", 0, True, as_framed=True, linger=(linger, linger_max)))
        for s in range(1, 61):  # busy: an event every 5 ms
            publish(bus, "a", range(s, s + 1))
            await asyncio.sleep(0.005)
        while sum(map(len, got)) < 60:
            await asyncio.sleep(0.01)
        await asyncio.sleep(2 * linger_max + 0.05)  # quiet, longer than any linger
        publish(bus, "a", range(61, 62))
        publish_at = len(got)
        await asyncio.sleep(linger / 2)  # the stream waits for events, not in a linger: this one goes at once
        assert len(got) == publish_at + 1 and got[-1] == [61]
        reader.cancel()
        return got

    steady = run(batches(0.01, 0.0))
    growing = run(batches(0.01, 0.16))
    for got in (steady, growing):
        assert [s for b in got for s in b] == list(range(1, 62))  # every event, in order, once
    assert 2 * len(growing) < len(steady)  # busy: fewer, fuller batches
