"""Fixtures for the scheduling tests: real agents (see sched_harness.py), all stopped afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kvmplat.client.agent import TlsFiles
from sched_harness import Agent

AgentFactory = Callable[..., Agent]


@pytest.fixture
def agents() -> Iterator[AgentFactory]:
    """Starts agents (`agents(address, *flags, netns="", tls=None)`); every one is stopped and cleaned up afterwards."""
    started: list[Agent] = []

    def make(address: str, *flags: str, netns: str = "", tls: TlsFiles | None = None) -> Agent:
        a = Agent(address, *flags, netns=netns, tls=tls)
        started.append(a)
        return a

    yield make
    for a in started:
        a.close()
