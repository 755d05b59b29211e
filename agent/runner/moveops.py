"""The runner's side of snapshots and live migration: freezing a VM's state, dirty-page rounds, and building an
incoming VM from a frozen state. Guest memory itself never passes through here: the agent maps the VM's memfd.

Source (live migration): migrate_begin (RUNNING -> MIGRATING, dirty logging on, the guest keeps running), dirty
(the pages written since the last call), migrate_stop (vCPUs parked, console drained, the last dirty pages and the
frozen state), then migrate_done (MIGRATING -> STOPPED) once the target runs the VM, or migrate_abort
(MIGRATING -> RUNNING, as before) on any failure.
Target (or restore): a runner made with `incoming` in its config is MIGRATING and silent; load puts the frozen
state into its vCPUs and devices; arrive gives it its first sequence number and lets it run (or stay PAUSED).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from kvmplat.agent.errors import FailedPrecondition
from kvmplat.agent.registry.lifecycle import Event, State, next_state
from kvmplat.agent.runner import vmstate
from kvmplat.agent.runner.consolereader import ConsoleReader
from kvmplat.agent.runner.machine import Machine
from kvmplat.agent.runner.throttle import Throttle
from kvmplat.agent.runner.vcpu import Mode
from kvmplat.agent.runner.wire import (
    Arrival,
    Arrived,
    Call,
    DirtyPages,
    FinalCopy,
    Frozen,
    Loaded,
    LoadState,
    MemoryFd,
    Note,
    Result,
    StateReply,
    ThrottleTo,
)

if TYPE_CHECKING:
    from kvmplat.agent.runner.vmrunner import VmRunner

__all__ = ["OPS", "dispatch"]


def _machine(r: VmRunner, *states: State) -> Machine:
    if r.machine is None or r.state not in states:
        want = " or ".join(s.name for s in states)
        raise FailedPrecondition(f"VM {r.name!r} is {r.state.name}: this needs it {want}")
    return r.machine


def _park(r: VmRunner) -> None:
    for t in r.threads:
        t.set_mode(Mode.PAUSE)
    for t in r.threads:
        t.wait_parked()


def _bitmap(m: Machine) -> str:
    return base64.b64encode(m.vm.get_dirty_log(0, m.memory.pages)).decode()


_A = TypeVar("_A")


def _args(msg: Call, cls: type[_A]) -> _A:
    if not isinstance(msg.args, cls):
        raise FailedPrecondition(f"runner op {msg.op!r} needs {cls.__name__} arguments")
    return msg.args


def memory(r: VmRunner, msg: Call) -> MemoryFd:
    """Where the agent finds guest memory (this process's memfd: /proc/PID/fd/FD), its size, and the exact CPUID
    table the guest was given."""
    m = _machine(r, State.PAUSED, State.MIGRATING, State.RUNNING)
    rows = r.cpuid if r.cpuid is not None else tuple(m.kvm.get_supported_cpuid())
    return MemoryFd(os.getpid(), m.memory.fd, m.memory.size, rows)


def freeze(r: VmRunner, msg: Call) -> Frozen:
    """A PAUSED VM's state (a snapshot's), with the sequence number of its latest event."""
    m = _machine(r, State.PAUSED)
    return Frozen(vmstate.freeze(m), r.log.last_seq, dict(r.milestones))


def migrate_begin(r: VmRunner, msg: Call) -> StateReply:
    """RUNNING -> MIGRATING: dirty logging on (what is dirty so far is dropped: round 1 sends everything)."""
    new = next_state(r.name, r.state, Event.MIGRATE)
    m = _machine(r, State.RUNNING)
    m.vm.log_dirty_pages(True)
    m.vm.get_dirty_log(0, m.memory.pages)
    r.throttle = Throttle(r.threads)
    r.transition(new, f"migrating to {_args(msg, Note).text}")
    return StateReply(new.name, r.reason)


def throttle(r: VmRunner, msg: Call) -> StateReply:
    """Auto-converge: holds the vCPUs paused `percent` % of each period from now on."""
    _machine(r, State.MIGRATING)
    if r.throttle is not None:
        r.throttle.set(_args(msg, ThrottleTo).percent)
    return StateReply(r.state.name, r.reason)


def _unthrottle(r: VmRunner, resume: bool) -> None:
    if r.throttle is not None:
        r.throttle.end(resume)
        r.throttle = None


def dirty(r: VmRunner, msg: Call) -> DirtyPages:
    """The pages written since the last call, as a base64 bitmap (bit i: page i)."""
    return DirtyPages(_bitmap(_machine(r, State.MIGRATING)))


def migrate_stop(r: VmRunner, msg: Call) -> FinalCopy:
    """Stops the guest for the final copy: vCPUs parked, console drained; the last dirty pages and the state."""
    m = _machine(r, State.MIGRATING)
    _unthrottle(r, False)
    _park(r)
    r.console.stop()  # its last lines are events here; a partial line stays in the UART and moves with it
    return FinalCopy(_bitmap(m), vmstate.freeze(m), r.log.last_seq)


def migrate_abort(r: VmRunner, msg: Call) -> StateReply:
    """MIGRATING -> RUNNING: the guest runs on here as it was."""
    new = next_state(r.name, r.state, Event.ABORT_MIGRATION)
    m = _machine(r, State.MIGRATING)
    m.vm.log_dirty_pages(False)
    _unthrottle(r, False)
    if r.console.stopped:
        r.console = ConsoleReader(m.console_fd, m.devices, r.on_console)
    for t in r.threads:
        t.set_mode(Mode.RUN)
    r.transition(new, f"migration failed, running here again: {_args(msg, Note).text}")
    return StateReply(new.name, r.reason)


def migrate_done(r: VmRunner, msg: Call) -> StateReply:
    """MIGRATING -> STOPPED: the target runs the VM now; this copy is freed."""
    new = next_state(r.name, r.state, Event.MIGRATED)
    _machine(r, State.MIGRATING)
    _unthrottle(r, False)
    r.teardown()
    r.transition(new, f"migrated to {_args(msg, Note).text}")
    return StateReply(new.name, r.reason)


def load(r: VmRunner, msg: Call) -> Loaded:
    """Loads a frozen state into this incoming VM (vCPUs stay parked); returns notes on what the host refused."""
    m = _machine(r, State.MIGRATING)
    if not r.incoming:
        raise FailedPrecondition(f"VM {r.name!r} is not an incoming VM")
    args = _args(msg, LoadState)
    notes = vmstate.load(m, args.state)
    r.milestones.update({k: float(v) for k, v in args.milestones.items()})
    return Loaded(tuple(notes))


def arrive(r: VmRunner, msg: Call) -> Arrived:
    """MIGRATING -> RUNNING (or PAUSED): the incoming VM's first event, numbered after its source's last."""
    arrival = _args(msg, Arrival)
    event = Event.ARRIVE_PAUSED if arrival.paused else Event.ARRIVE
    new = next_state(r.name, r.state, event)
    _machine(r, State.MIGRATING)
    r.log.renumber(arrival.first_seq)
    r.incoming = False
    if new is State.RUNNING:
        r.milestones.setdefault("started", time.time())
        for t in r.threads:
            t.set_mode(Mode.RUN)
    r.transition(new, arrival.reason)
    return Arrived(new.name, r.log.last_seq)


OPS: dict[str, Callable[[VmRunner, Call], Result]] = {
    "memory": memory,
    "freeze": freeze,
    "migrate_begin": migrate_begin,
    "dirty": dirty,
    "throttle": throttle,
    "migrate_stop": migrate_stop,
    "migrate_abort": migrate_abort,
    "migrate_done": migrate_done,
    "load": load,
    "arrive": arrive,
}


def dispatch(r: VmRunner, msg: Call) -> Result:
    """Runs one move op under the runner's lock."""
    with r.lock:
        return OPS[msg.op](r, msg)
