"""Fixtures for the end-to-end tests that drive the real `kvmplat-agent` over gRPC (see agent_harness.py)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_harness import AgentFactory, AgentProc


@pytest.fixture
def agent_factory() -> Iterator[AgentFactory]:
    """Starts agents with extra flags (`agent_factory("--max-vcpus", "2")`); all are stopped afterwards."""
    started: list[AgentProc] = []

    def make(*flags: str) -> AgentProc:
        a = AgentProc(Path(tempfile.mkdtemp(prefix="kvmplat-e2e-")), *flags)
        started.append(a)
        return a

    yield make
    for a in started:
        a.close()


@pytest.fixture
def agents() -> Iterator[list[AgentProc]]:
    """Agents of one test that restarts agents, the live one last; each closed at the end, newest first."""
    started: list[AgentProc] = []
    yield started
    for a in reversed(started):
        a.close()


@pytest.fixture
def agent(agent_factory: AgentFactory) -> AgentProc:
    """A fresh agent on a private socket with default limits."""
    return agent_factory()


@pytest.fixture(scope="module")
def shared_agent() -> Iterator[AgentProc]:
    """One agent for a whole module (property tests), VMs destroyed at the end."""
    a = AgentProc(Path(tempfile.mkdtemp(prefix="kvmplat-e2e-")))
    yield a
    a.close()
