"""Fixtures for the scheduling tests: real agents (see sched_harness.py), all stopped afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sched_harness import Agent

AgentFactory = Callable[..., Agent]


@pytest.fixture
def agents() -> Iterator[AgentFactory]:
    """Starts agents (`agents(address, *flags, netns="")`); every one is stopped and cleaned up afterwards."""
    started: list[Agent] = []

    def make(address: str, *flags: str, netns: str = "") -> Agent:
        a = Agent(address, *flags, netns=netns)
        started.append(a)
        return a

    yield make
    for a in started:
        a.close()
