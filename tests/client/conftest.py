"""Fixtures for the client's unit tests: a fake agent on a private unix socket (see fake_agent_server.py)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
from fake_agent_server import FakeAgentServer


@pytest.fixture
def fake_agent() -> Iterator[FakeAgentServer]:
    """A running fake agent; its socket lives in a short temp dir (unix paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="kvmplat-") as tmp, FakeAgentServer(f"{tmp}/agent.sock") as server:
        yield server
