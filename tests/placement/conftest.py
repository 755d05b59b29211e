"""Fixtures for the Placement tests: a real Placement per module (placement_harness.py) and agents registered with
it, every one stopped (its VMs destroyed) afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from placement_harness import PlacedAgent, PlacementService, placement_unavailable


@pytest.fixture(scope="module")
def placement() -> Iterator[PlacementService]:
    """Placement on loopback (SQLite, noauth2), for the module's tests."""
    why = placement_unavailable()
    if why:
        pytest.fail(why)  # a pyproject dependency: its absence is a broken install, not a skip
    service = PlacementService()
    yield service
    service.close()


@pytest.fixture
def placed_agents(placement: PlacementService, tmp_path: Path) -> Iterator[Callable[..., PlacedAgent]]:
    """`placed_agents(name, *flags)`: an agent on unix://tmp/NAME.sock registered with `placement`."""
    started: list[PlacedAgent] = []

    def make(name: str, *flags: str, **kw: Any) -> PlacedAgent:
        a = PlacedAgent(f"unix://{tmp_path}/{name}.sock", tmp_path / name, kw.pop("url", placement.url), *flags, **kw)
        started.append(a)
        return a

    yield make
    for a in started:
        a.close()
