"""Every state × event pair of the lifecycle table."""

from __future__ import annotations

import itertools

import pytest
from kvmplat.agent.errors import FailedPrecondition
from kvmplat.agent.registry.lifecycle import TRANSITIONS, Event, IllegalTransition, State, allowed_events, next_state

EXPECTED = {
    (State.CREATED, Event.START): State.RUNNING,
    (State.CREATED, Event.STOP): State.STOPPED,
    (State.CREATED, Event.DESTROY): State.DESTROYED,
    (State.CREATED, Event.CRASH): State.CRASHED,
    (State.RUNNING, Event.PAUSE): State.PAUSED,
    (State.RUNNING, Event.STOP): State.STOPPED,
    (State.RUNNING, Event.GUEST_EXIT): State.STOPPED,
    (State.RUNNING, Event.CRASH): State.CRASHED,
    (State.PAUSED, Event.RESUME): State.RUNNING,
    (State.PAUSED, Event.STOP): State.STOPPED,
    (State.PAUSED, Event.GUEST_EXIT): State.STOPPED,
    (State.PAUSED, Event.CRASH): State.CRASHED,
    (State.STOPPED, Event.START): State.RUNNING,  # issue 18: a STOPPED VM boots again (a new runner)
    (State.STOPPED, Event.DESTROY): State.DESTROYED,
    (State.CRASHED, Event.DESTROY): State.DESTROYED,
    (State.RUNNING, Event.MIGRATE): State.MIGRATING,
    (State.MIGRATING, Event.ABORT_MIGRATION): State.RUNNING,
    (State.MIGRATING, Event.MIGRATED): State.STOPPED,
    (State.MIGRATING, Event.ARRIVE): State.RUNNING,
    (State.MIGRATING, Event.ARRIVE_PAUSED): State.PAUSED,
    (State.MIGRATING, Event.GUEST_EXIT): State.STOPPED,
    (State.MIGRATING, Event.CRASH): State.CRASHED,
    (State.MIGRATING, Event.DESTROY): State.DESTROYED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_pair(state: State, event: Event) -> None:
    if (state, event) in EXPECTED:
        assert next_state("vm1", state, event) is EXPECTED[(state, event)]
        return
    with pytest.raises(IllegalTransition) as info:
        next_state("vm1", state, event)
    text = str(info.value)
    assert state.name in text and event.value in text and "vm1" in text
    assert isinstance(info.value, FailedPrecondition)


def test_table_is_exactly_the_documented_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED


def test_nothing_leaves_destroyed() -> None:
    assert allowed_events(State.DESTROYED) == []
