"""Every state × event pair of the lifecycle table, checked against what the design says of it (lifecycle.py's
diagram), not against a second copy of the table."""

from __future__ import annotations

import itertools

import pytest
from kvmplat.agent.errors import FailedPrecondition
from kvmplat.agent.registry.lifecycle import (
    ACTIVE,
    LIVE,
    REPORTED,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    allowed_events,
    next_state,
    proto_value,
)
from kvmplat.v1 import agent_pb2 as pb

S, E = State, Event


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_pair_is_the_table_or_a_refusal_naming_both(state: State, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert next_state("vm1", state, event) is TRANSITIONS[(state, event)]
        return
    with pytest.raises(IllegalTransition) as info:
        next_state("vm1", state, event)
    text = str(info.value)
    assert state.name in text and event.value in text and "vm1" in text
    assert isinstance(info.value, FailedPrecondition)


def test_requests_go_where_their_verb_says() -> None:
    verbs = (E.START, E.PAUSE, E.RESUME, E.MIGRATE, E.ABORT_MIGRATION, E.MIGRATED, E.ARRIVE, E.ARRIVE_PAUSED)
    assert {(s, e): t for (s, e), t in TRANSITIONS.items() if e in verbs} == {
        (S.CREATED, E.START): S.RUNNING,
        (S.STOPPED, E.START): S.RUNNING,  # a stopped VM boots again (a new runner)
        (S.RUNNING, E.PAUSE): S.PAUSED,
        (S.PAUSED, E.RESUME): S.RUNNING,
        (S.RUNNING, E.MIGRATE): S.MIGRATING,  # only a running guest is migrated live
        (S.MIGRATING, E.ABORT_MIGRATION): S.RUNNING,  # it runs on here as before
        (S.MIGRATING, E.MIGRATED): S.STOPPED,  # it runs elsewhere now
        (S.MIGRATING, E.ARRIVE): S.RUNNING,  # an incoming VM starts here
        (S.MIGRATING, E.ARRIVE_PAUSED): S.PAUSED,
    }


def test_ends() -> None:
    """stop and a guest exit end in STOPPED, a crash in CRASHED; destroy only from a VM without a running guest
    (an incoming VM still MIGRATING has none yet)."""
    for (s, e), t in TRANSITIONS.items():
        want = {E.STOP: S.STOPPED, E.GUEST_EXIT: S.STOPPED, E.CRASH: S.CRASHED, E.DESTROY: S.DESTROYED}.get(e, t)
        assert t is want, (s, e)
    assert {s for (s, e) in TRANSITIONS if e is E.DESTROY} == {S.CREATED, S.STOPPED, S.CRASHED, S.MIGRATING}


def test_groups_read_off_the_table() -> None:
    assert {S.CREATED, S.RUNNING, S.PAUSED, S.MIGRATING} == LIVE
    assert {S.RUNNING, S.PAUSED, S.MIGRATING} == ACTIVE
    assert allowed_events(S.DESTROYED) == []
    assert allowed_events(S.STOPPED) == [E.START, E.DESTROY]
    assert allowed_events(S.CRASHED) == [E.DESTROY]


def _reachable(start: State) -> set[State]:
    """Every state some sequence of events leads to from `start` (itself included)."""
    out, todo = {start}, [start]
    while todo:
        s = todo.pop()
        for e in allowed_events(s):
            if (t := TRANSITIONS[(s, e)]) not in out:
                out.add(t)
                todo.append(t)
    return out


def test_every_state_is_reachable_from_created_and_reaches_destroyed() -> None:
    assert _reachable(S.CREATED) == set(State)
    for s in State:
        assert S.DESTROYED in _reachable(s), s


def test_reported_states_are_the_protos() -> None:
    protos = [str(n) for n in pb.VmState.keys() if n != "VM_STATE_UNSPECIFIED"]  # noqa: SIM118
    assert [(s.name, proto_value(s)) for s in REPORTED] == [(n, pb.VmState.Value(n)) for n in protos]
    assert proto_value(S.DESTROYED) == pb.VM_STATE_UNSPECIFIED
