"""agent/runner/outbox.py over a real socket pair: a reader's answer goes out in one write with the events queued
before it, events from other threads reach the agent through the writer thread, everything in the order made, and
events past OUTBOUND_MAX are dropped while the agent does not read."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from kvmplat.agent.runner import outbox as outbox_mod
from kvmplat.agent.runner.outbox import Outbox
from kvmplat.agent.runner.wire import ConsoleText, Reply, RunnerEvent, StateReply, decode


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the runner's end, the agent's end) of a connected socket pair."""
    runner, agent = socket.socketpair()
    with runner, agent:
        yield runner, agent


def event(seq: int) -> RunnerEvent:
    return RunnerEvent(seq, 0.0, ConsoleText(f"line {seq}\n"))


def lines(sock: socket.socket, count: int) -> list[object]:
    """The next `count` messages the runner sent."""
    got, buf = [], b""
    while len(got) < count:
        buf += sock.recv(1 << 16)
        *done, buf = buf.split(b"\n")
        got += [decode(line) for line in done]
    return got


def test_an_answer_goes_out_with_the_events_it_made_in_one_write(pair: tuple[socket.socket, socket.socket]) -> None:
    runner, agent = pair
    out = Outbox(runner)
    out.begin_answer()
    out.put(event(1))
    out.put(event(2))  # no writer thread runs: only the answer can send these
    out.answer(Reply(7, result=StateReply("RUNNING")))
    data = agent.recv(1 << 16)
    assert [decode(line) for line in data.splitlines()] == [event(1), event(2), Reply(7, result=StateReply("RUNNING"))]


def test_events_of_other_threads_go_through_the_writer_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    runner, agent = pair
    out = Outbox(runner)
    writer = threading.Thread(target=out.run_writer)
    writer.start()
    producers = [
        threading.Thread(target=lambda k=k: [out.put(event(k * 1000 + i)) for i in range(200)]) for k in (1, 2)
    ]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    got = lines(agent, 400)
    out.close()
    writer.join(10)
    for k in (1, 2):
        assert [m.seq for m in got if m.seq // 1000 == k] == [k * 1000 + i for i in range(200)]  # type: ignore[attr-defined]


def test_events_past_the_limit_are_dropped_while_the_agent_does_not_read(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, agent = pair
    monkeypatch.setattr(outbox_mod, "OUTBOUND_MAX", 5)
    out = Outbox(runner)
    out.begin_answer()
    for s in range(1, 9):
        out.put(event(s))
    out.answer(Reply(1, result=StateReply("PAUSED")))
    assert [getattr(m, "seq", None) for m in lines(agent, 6)] == [1, 2, 3, 4, 5, None]
