"""The VM lifecycle as data: states, events, the one transition table and the pure `next_state`.

    CREATED ──start──> RUNNING ──pause──> PAUSED
                        ^  │  <──resume──   │
                        │  └──stop / guest exit──> STOPPED ──destroy──> DESTROYED
                        │                            │
                        └──────────start─────────────┘  (a fresh boot of the same spec, by a new runner)
                        └────── crash (from CREATED, RUNNING, PAUSED) ──> CRASHED ──destroy──> DESTROYED

    Migration (both agents' VMs pass through MIGRATING):
    source  RUNNING ──migrate──> MIGRATING ──migrated──> STOPPED (then destroyed by the agent)
                                     └──abort migration──> RUNNING   (any failure: the guest runs on as it was)
    target  (incoming runner, silent) MIGRATING ──arrive──> RUNNING, or ──arrive paused──> PAUSED (a restore)
                                     └──destroy──> DESTROYED        (a transfer that failed leaves nothing)

Every RPC and every runner happening is an `Event`; whether it is allowed in a state is decided here and nowhere
else. A refused transition is an `IllegalTransition` (FAILED_PRECONDITION at the gRPC edge) naming both states.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from kvmplat.agent.errors import FailedPrecondition

__all__ = [
    "ACTIVE",
    "LIVE",
    "REPORTED",
    "TRANSITIONS",
    "Event",
    "IllegalTransition",
    "State",
    "allowed_events",
    "next_state",
    "proto_value",
]


class State(enum.Enum):
    """VM states; the first six are the proto's VmState values, DESTROYED is the end of the record."""

    CREATED = 1
    RUNNING = 2
    PAUSED = 3
    STOPPED = 4
    CRASHED = 5
    MIGRATING = 6
    DESTROYED = 7


class Event(enum.Enum):
    """What can happen to a VM: caller requests (lower-case verbs) and runner reports."""

    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    DESTROY = "destroy"
    GUEST_EXIT = "guest exit"  # the guest powered off or reset
    CRASH = "crash"  # the guest or its runner failed
    MIGRATE = "migrate"  # live migration begins: dirty logging on, the guest keeps running
    ABORT_MIGRATION = "abort migration"  # the migration failed: the guest runs on here
    MIGRATED = "migrated"  # the target confirmed: the guest runs there now
    ARRIVE = "arrive"  # an incoming VM (migration or restore) starts running here
    ARRIVE_PAUSED = "arrive paused"  # an incoming VM is restored paused


S, E = State, Event
TRANSITIONS: Mapping[tuple[State, Event], State] = MappingProxyType(
    {
        (S.CREATED, E.START): S.RUNNING,
        (S.CREATED, E.STOP): S.STOPPED,
        (S.CREATED, E.DESTROY): S.DESTROYED,
        (S.CREATED, E.CRASH): S.CRASHED,
        (S.RUNNING, E.PAUSE): S.PAUSED,
        (S.RUNNING, E.STOP): S.STOPPED,
        (S.RUNNING, E.GUEST_EXIT): S.STOPPED,
        (S.RUNNING, E.CRASH): S.CRASHED,
        (S.PAUSED, E.RESUME): S.RUNNING,
        (S.PAUSED, E.STOP): S.STOPPED,
        (S.PAUSED, E.GUEST_EXIT): S.STOPPED,  # the guest ended just as the pause landed
        (S.PAUSED, E.CRASH): S.CRASHED,
        (S.STOPPED, E.START): S.RUNNING,  # the agent boots the spec again in a new runner
        (S.STOPPED, E.DESTROY): S.DESTROYED,
        (S.CRASHED, E.DESTROY): S.DESTROYED,
        (S.RUNNING, E.MIGRATE): S.MIGRATING,
        (S.MIGRATING, E.ABORT_MIGRATION): S.RUNNING,
        (S.MIGRATING, E.MIGRATED): S.STOPPED,
        (S.MIGRATING, E.ARRIVE): S.RUNNING,
        (S.MIGRATING, E.ARRIVE_PAUSED): S.PAUSED,
        (S.MIGRATING, E.GUEST_EXIT): S.STOPPED,  # the guest powered off while its memory was being copied
        (S.MIGRATING, E.CRASH): S.CRASHED,
        (S.MIGRATING, E.DESTROY): S.DESTROYED,  # an incoming VM whose transfer failed
    }
)
del S, E

# The groups every other module uses, read off the table: LIVE states still have a guest (it holds memory and vCPUs;
# a runner lost there makes the VM CRASHED), ACTIVE ones have vCPU threads (the guest itself can end them).
LIVE: frozenset[State] = frozenset(s for (s, e) in TRANSITIONS if e is Event.CRASH)
ACTIVE: frozenset[State] = frozenset(s for (s, e) in TRANSITIONS if e is Event.GUEST_EXIT)
REPORTED: tuple[State, ...] = tuple(s for s in State if s is not State.DESTROYED)  # the proto's VmState values


def proto_value(state: State) -> int:
    """The proto VmState number of `state` (0, VM_STATE_UNSPECIFIED, for DESTROYED)."""
    return state.value if state in REPORTED else 0


class IllegalTransition(FailedPrecondition):
    """An event that the transition table does not allow in the VM's current state."""

    def __init__(self, vm: str, state: State, event: Event) -> None:
        allowed = ", ".join(e.value for e in allowed_events(state)) or "nothing"
        super().__init__(f"cannot {event.value} VM {vm!r}: it is {state.name} (allowed there: {allowed})")
        self.state = state
        self.event = event


def allowed_events(state: State) -> list[Event]:
    """Events the table allows in `state`, in declaration order."""
    return [e for e in Event if (state, e) in TRANSITIONS]


def next_state(vm: str, state: State, event: Event) -> State:
    """The state after `event` in `state`, or IllegalTransition."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(vm, state, event) from None
