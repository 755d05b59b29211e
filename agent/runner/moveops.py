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
from typing import TYPE_CHECKING, Any

from kvmplat.agent.errors import FailedPrecondition
from kvmplat.agent.registry.lifecycle import Event, State, next_state
from kvmplat.agent.runner import vmstate
from kvmplat.agent.runner.consolereader import ConsoleReader
from kvmplat.agent.runner.machine import Machine
from kvmplat.agent.runner.throttle import Throttle
from kvmplat.agent.runner.vcpu import Mode

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


def memory(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """Where the agent finds guest memory (this process's memfd: /proc/PID/fd/FD), its size, and the exact CPUID
    table the guest was given."""
    m = _machine(r, State.PAUSED, State.MIGRATING, State.RUNNING)
    rows = r.cpuid if r.cpuid is not None else [list(x) for x in m.kvm.get_supported_cpuid()]
    return {"pid": os.getpid(), "fd": m.memory.fd, "size": m.memory.size, "cpuid": rows}


def freeze(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """A PAUSED VM's state (a snapshot's), with the sequence number of its latest event."""
    m = _machine(r, State.PAUSED)
    return {"state": vmstate.freeze(m), "last_seq": r.log.last_seq, "milestones": dict(r.milestones)}


def migrate_begin(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """RUNNING -> MIGRATING: dirty logging on (what is dirty so far is dropped: round 1 sends everything)."""
    new = next_state(r.name, r.state, Event.MIGRATE)
    m = _machine(r, State.RUNNING)
    m.vm.log_dirty_pages(True)
    m.vm.get_dirty_log(0, m.memory.pages)
    r.throttle = Throttle(r.threads)
    r.transition(new, f"migrating to {msg.get('target', '?')}")
    return {}


def throttle(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """Auto-converge: holds the vCPUs paused `percent` % of each period from now on."""
    _machine(r, State.MIGRATING)
    if r.throttle is not None:
        r.throttle.set(int(msg.get("percent", 0)))
    return {}


def _unthrottle(r: VmRunner, resume: bool) -> None:
    if r.throttle is not None:
        r.throttle.end(resume)
        r.throttle = None


def dirty(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """The pages written since the last call, as a base64 bitmap (bit i: page i)."""
    return {"bitmap": _bitmap(_machine(r, State.MIGRATING))}


def migrate_stop(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """Stops the guest for the final copy: vCPUs parked, console drained; the last dirty pages and the state."""
    m = _machine(r, State.MIGRATING)
    _unthrottle(r, False)
    _park(r)
    r.console.stop()  # its last lines are events here; a partial line stays in the UART and moves with it
    return {"bitmap": _bitmap(m), "state": vmstate.freeze(m), "last_seq": r.log.last_seq}


def migrate_abort(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """MIGRATING -> RUNNING: the guest runs on here as it was."""
    new = next_state(r.name, r.state, Event.ABORT_MIGRATION)
    m = _machine(r, State.MIGRATING)
    m.vm.log_dirty_pages(False)
    _unthrottle(r, False)
    if r.console.stopped:
        r.console = ConsoleReader(m.console_fd, m.cvm, r.on_console)
    for t in r.threads:
        t.set_mode(Mode.RUN)
    r.transition(new, f"migration failed, running here again: {msg.get('why', 'aborted')}")
    return {"state": new.name}


def migrate_done(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """MIGRATING -> STOPPED: the target runs the VM now; this copy is freed."""
    new = next_state(r.name, r.state, Event.MIGRATED)
    _machine(r, State.MIGRATING)
    _unthrottle(r, False)
    r.teardown()
    r.transition(new, f"migrated to {msg.get('target', '?')}")
    return {"state": new.name}


def load(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """Loads a frozen state into this incoming VM (vCPUs stay parked); returns notes on what the host refused."""
    m = _machine(r, State.MIGRATING)
    if not r.incoming:
        raise FailedPrecondition(f"VM {r.name!r} is not an incoming VM")
    notes = vmstate.load(m, msg["state"])
    r.milestones.update({k: float(v) for k, v in msg.get("milestones", {}).items()})
    return {"notes": notes}


def arrive(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """MIGRATING -> RUNNING (or PAUSED): the incoming VM's first event, numbered after its source's last."""
    event = Event.ARRIVE_PAUSED if msg.get("paused") else Event.ARRIVE
    new = next_state(r.name, r.state, event)
    _machine(r, State.MIGRATING)
    r.log.renumber(int(msg.get("first_seq", 1)))
    r.incoming = False
    if new is State.RUNNING:
        r.milestones.setdefault("started", time.time())
        for t in r.threads:
            t.set_mode(Mode.RUN)
    r.transition(new, str(msg.get("reason", "arrived")))
    return {"state": new.name, "last_seq": r.log.last_seq}


OPS = {
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


def dispatch(r: VmRunner, msg: dict[str, Any]) -> dict[str, Any]:
    """Runs one move op under the runner's lock."""
    with r.lock:
        return OPS[str(msg["op"])](r, msg)
