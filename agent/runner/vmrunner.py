"""The runner of one VM: builds the machine, drives its lifecycle through the transition table, streams events.

Threads: one per vCPU (VcpuThread), one reading the console pipe, one applying guest exits, and one per agent
connection. Every state change happens under `_lock` through lifecycle.next_state, so a request and a guest exit
arriving together are serialized. The runner outlives its agent: events wait in the ring until an agent says hello.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import BinaryIO

from kvmplat.agent.errors import FailedPrecondition, KvmplatError
from kvmplat.agent.kvm.fds import Vcpu
from kvmplat.agent.registry.lifecycle import ACTIVE, Event, State, next_state
from kvmplat.agent.runner import moveops, workers
from kvmplat.agent.runner.consolereader import ConsoleReader
from kvmplat.agent.runner.crashinfo import CpuView, explain_emulation_failure, instruction_at
from kvmplat.agent.runner.eventlog import EventLog
from kvmplat.agent.runner.exits import Outcome, Verdict
from kvmplat.agent.runner.machine import Machine, build_machine
from kvmplat.agent.runner.outbox import Outbox
from kvmplat.agent.runner.panic import PANIC_GRACE_S, PanicWatch
from kvmplat.agent.runner.throttle import Throttle
from kvmplat.agent.runner.vcpu import Mode, VcpuThread
from kvmplat.agent.runner.wire import (
    MAX_LINE,
    Accepted,
    Call,
    ConsoleText,
    ExitReport,
    Hello,
    Reply,
    Result,
    RunnerConfig,
    RunnerEvent,
    RunnerStats,
    StateChange,
    StateReply,
    decode,
    failure_of,
)

__all__ = ["MILESTONES", "VmRunner"]

_MODE_AFTER = {State.RUNNING: Mode.RUN, State.PAUSED: Mode.PAUSE}
# Console text that marks a boot milestone (VmStats field -> marker); the first console byte is timed by the UART.
MILESTONES = {"linux_banner": "Linux version ", "kvmplat_init": "KVMPLAT-INIT"}
_REASON = {
    Event.START: "started",
    Event.PAUSE: "paused on request",
    Event.RESUME: "resumed on request",
    Event.STOP: "stopped on request",
}


class VmRunner:
    """One VM and its lifecycle, served to the agent over a unix socket."""

    def __init__(self, config: RunnerConfig, machine: Machine | None = None) -> None:
        """Builds the VM of `config`, or takes `machine`, already built from an equal config (runner/prebuilt.py)."""
        self.name = config.name
        self.log = EventLog(config.first_seq)
        self.incoming = bool(config.incoming)  # built for a restore or an incoming migration: silent until
        # it arrives (moveops.arrive); a restart (STOPPED --start--> RUNNING) is a new runner taking over a stopped VM
        restart = config.restart
        self.state = State.MIGRATING if self.incoming else State.STOPPED if restart else State.CREATED
        self.reason = config.incoming or ("stopped; booting again" if restart else "created")
        self._lock = threading.RLock()
        self.lock = self._lock  # moveops acts under it too
        self.cpuid = config.cpuid  # the exact table the guest was given
        self._exits: queue.Queue[tuple[int, Outcome]] = queue.Queue()
        self.machine: Machine | None = machine or build_machine(config)
        self.threads = [VcpuThread(v, self.machine.devices, self._on_vcpu_exit) for v in self.machine.vcpus]
        self.console = ConsoleReader(self.machine.console_fd, self.machine.devices, self._on_console)
        self._done = threading.Event()
        self._closer: workers.Worker | None = None
        self._listener: socket.socket | None = None  # once serve() runs
        self.panic = PanicWatch()
        self.milestones: dict[str, float] = {}  # VmStats milestone field -> wall-clock seconds
        self.throttle: Throttle | None = None  # while migrating out: auto-converge (moveops)
        workers.start(self._exit_worker, "exits")
        if not (self.incoming or restart):
            self.log.emit(StateChange("", State.CREATED.name, f"created ({self.machine.image.description})"))

    # --- lifecycle -------------------------------------------------------------------------------------------
    def request(self, event: Event) -> State:
        """Applies a caller's request (start, pause, resume, stop) through the transition table."""
        with self._lock:
            new = next_state(self.name, self.state, event)
            if self.machine is None:  # torn down: a restart is a new runner's job (the agent spawns one)
                raise FailedPrecondition(f"VM {self.name!r} is {self.state.name}: this runner has no guest left")
            if new in _MODE_AFTER:
                for t in self.threads:
                    t.set_mode(_MODE_AFTER[new])
                if new is State.PAUSED:
                    for t in self.threads:
                        t.wait_parked()
            elif new is State.STOPPED:
                self._teardown()
            if new is State.RUNNING:
                self.milestones.setdefault("started", time.time())
            self._transition(new, _REASON.get(event, event.value))
            return new

    def _transition(self, new: State, reason: str) -> None:
        old, self.state, self.reason = self.state, new, reason
        self.log.emit(StateChange(old.name, new.name, reason))

    def transition(self, new: State, reason: str) -> None:
        """Records a state change (under `lock`) as an event."""
        self._transition(new, reason)

    def teardown(self) -> None:
        """Ends the vCPU threads and frees the VM (under `lock`)."""
        self._teardown()

    def on_console(self, text: str) -> None:
        """Console text from the reader: milestones, panic watch, an event."""
        self._on_console(text)

    def _on_vcpu_exit(self, index: int, outcome: Outcome) -> None:
        self._exits.put((index, outcome))  # handled on another thread: this vCPU's thread must not join itself

    def _exit_worker(self) -> None:
        while True:
            index, outcome = self._exits.get()
            with self._lock:
                if self.state not in ACTIVE:
                    continue  # a second vCPU reporting the same end, or an end racing a stop
                body = self._exit_body(index, outcome)
                self._teardown()  # drains the console first, so the guest's last lines come before its end
                reason = outcome.verdict.value if outcome.verdict is not Verdict.CRASH else body.detail
                if self.panic.panic:  # seen in the drained console too: the reset that follows a panic is a crash
                    body = replace(body, reason=Verdict.CRASH.value, detail=self.panic.detail())
                    reason = self.panic.reason()
                event = Event.CRASH if body.reason == Verdict.CRASH.value else Event.GUEST_EXIT
                new = next_state(self.name, self.state, event)
                self.log.emit(body)
                self._transition(new, reason)

    def _exit_body(self, index: int, outcome: Outcome) -> ExitReport:
        body = ExitReport(outcome.verdict.value, index, outcome.detail, outcome.exit_name)
        if outcome.verdict is Verdict.CRASH and self.machine is not None:
            for t in self.threads:
                t.set_mode(Mode.PAUSE)
                t.wait_parked(1.0)
            vcpu = self.machine.vcpus[index]
            regs = vcpu.get_regs()
            names = ("rip", "rsp", "rax", "rbx", "rcx", "rdx", "rflags")
            body = replace(body, registers={n: int(getattr(regs, n)) for n in names})
            if outcome.extra.get("suberror") == 1:
                insn = outcome.instruction or _bytes_at_rip(self.machine, vcpu, int(regs.rip))
                detail = explain_emulation_failure(outcome.detail, insn, int(regs.rip))
                body = replace(body, instruction=insn.hex(), detail=detail)
        return body

    def _teardown(self) -> None:
        """Ends the vCPU threads and frees the VM (memory, fds); the runner itself stays for its record.

        The kernel objects are closed on a thread of their own: closing a VM fd waits out an SRCU grace period
        (7-16 ms measured here), which a stop need not wait for once no vCPU can run.
        """
        for t in self.threads:
            t.set_mode(Mode.STOP)
        for t in self.threads:
            t.join()
        self.console.stop()
        if self.machine is not None:
            machine, self.machine = self.machine, None
            self._closer = workers.start(machine.close, "vm-close")

    def stats(self) -> RunnerStats:
        """Exit counters summed over the vCPUs."""
        by: dict[int, int] = {}
        out = {"exits": 0, "unhandled_pio": 0, "unhandled_mmio": 0, "console_bytes": 0}
        for t in self.threads:
            for k, n in t.stats.counters().items():
                out[k] += n
            for reason, n in t.stats.by_reason().items():
                by[reason] = by.get(reason, 0) + n
        mem = self.machine.memory.size if self.machine is not None else 0
        # under the lock: a teardown frees the C device state; if one is running, it notes the milestone itself
        if self._lock.acquire(timeout=0.2):
            try:
                self._note_first_byte()
            finally:
                self._lock.release()
        return RunnerStats(
            out["exits"],
            out["unhandled_pio"],
            out["unhandled_mmio"],
            out["console_bytes"],
            tuple(sorted(by.items())),
            mem,
            dict(self.milestones),
        )

    def _note_first_byte(self) -> None:
        """Copies the UART's time of the first console byte into the milestones (once it exists). Called under
        `_lock`, or on the console thread, which a teardown joins before it frees the machine."""
        machine = self.machine
        if "first_console_byte" not in self.milestones and machine is not None and not machine.devices.closed:
            ns = machine.devices.first_console_ns()
            if ns:
                self.milestones["first_console_byte"] = ns / 1e9

    def _on_console(self, text: str) -> None:
        now = time.time()
        self._note_first_byte()
        for field, marker in MILESTONES.items():
            if field not in self.milestones and marker in text:
                self.milestones[field] = now
        self.log.emit(ConsoleText(text))
        if self.panic.feed(text):
            crash = Outcome(Verdict.CRASH, "panic", self.panic.reason())
            timer = threading.Timer(PANIC_GRACE_S, self._exits.put, args=((0, crash),))
            timer.daemon = True  # a guest that reboots after its panic (panic=-1) ends before this fires
            timer.start()

    # --- the agent's side --------------------------------------------------------------------------------------
    def serve(self, listener: socket.socket, first: tuple[socket.socket, BinaryIO] | None = None) -> None:
        """Accepts agent connections until destroyed; a new connection replaces the old one.

        The first connection (the agent that asked for this VM: `first`, the link a spare was handed its config on
        with the reader that read it, else the first accepted) is served on the calling thread, which the agent's
        request wakes already; an accept thread takes the later ones (an agent restarted), each on a thread of its
        own. The accept blocks without a timeout (an idle runner never wakes); a destroy ends it by shutting the
        listener down, which does not depend on the socket's path (the agent unlinks that once the destroy is
        answered).
        """
        self._listener = listener
        if first is None:
            conn = self._accept(listener)
            first = None if conn is None else (conn, conn.makefile("rb"))
        if first is not None:
            workers.start(functools.partial(self._accept_loop, listener), "accept")
            self._connection(*first)

    def _accept_loop(self, listener: socket.socket) -> None:
        while (conn := self._accept(listener)) is not None:
            workers.start(functools.partial(self._connection, conn, conn.makefile("rb")), "agent")

    def _accept(self, listener: socket.socket) -> socket.socket | None:
        """The next agent connection; None once destroyed."""
        try:
            conn, _ = listener.accept()
        except OSError:
            if self._done.is_set():
                return None
            raise
        if self._done.is_set():
            conn.close()
            return None
        return conn

    def _connection(self, conn: socket.socket, reader: BinaryIO) -> None:
        out = Outbox(conn)
        writer = workers.start(out.run_writer, "agent-writer")
        forward = out.put
        try:
            with reader as rfile:
                for line in rfile:
                    if len(line) > MAX_LINE:
                        break
                    msg = decode(line)
                    if not isinstance(msg, Call):
                        break
                    out.begin_answer()
                    out.answer(self._answer(msg, forward))
                    if msg.op == Event.DESTROY.value:
                        self._done.set()
                        if self._listener is not None:
                            with contextlib.suppress(OSError):
                                self._listener.shutdown(socket.SHUT_RDWR)  # wakes serve()'s accept
                        break
        except (OSError, ValueError):
            pass  # the agent went away; events wait in the ring for the next hello
        finally:
            if self.incoming:  # its agent went away before it arrived: nobody will ever claim it, so it goes
                self._done.set()
                if self._listener is not None:
                    with contextlib.suppress(OSError):
                        self._listener.shutdown(socket.SHUT_RDWR)
            if self.log.listener is forward:
                self.log.attach(None, 0)
            out.close()
            writer.join(2.0)
            conn.close()

    def _answer(self, msg: Call, forward: Callable[[RunnerEvent], None]) -> Reply:
        try:
            return Reply(msg.id, result=self._dispatch(msg, forward))
        except KvmplatError as e:
            return Reply(msg.id, error=failure_of(e))

    def _dispatch(self, msg: Call, forward: Callable[[RunnerEvent], None]) -> Result:
        op = msg.op
        if op == "hello":
            self.log.attach(forward, msg.since)
            return Hello(self.state.name, self.reason, os.getpid(), self.log.last_seq, self.stats())
        if op in (Event.START.value, Event.PAUSE.value, Event.RESUME.value, Event.STOP.value):
            return StateReply(self.request(Event(op)).name, self.reason, self.stats())
        if op in moveops.OPS:
            return moveops.dispatch(self, msg)
        if op == "stats":
            return self.stats()
        if op == "console":
            return Accepted(self._console_input(base64.b64decode(msg.data)))
        if op == Event.DESTROY.value:
            with self._lock:
                next_state(self.name, self.state, Event.DESTROY)
                self.state = State.DESTROYED
            return StateReply(State.DESTROYED.name)
        raise KvmplatError(f"unknown runner op {op!r}")

    def _console_input(self, data: bytes) -> int:
        with self._lock:
            if self.machine is None or self.state is not State.RUNNING:
                raise FailedPrecondition(
                    f"VM {self.name!r} is {self.state.name}: its console takes input only while RUNNING"
                )
            return self.machine.devices.console_input(data)

    def wait_destroyed(self) -> None:
        """Blocks until the agent destroys this VM, then frees what is left."""
        self._done.wait()
        with self._lock:
            if self.machine is not None:
                self._teardown()
        if self._closer is not None:
            self._closer.join()


def _bytes_at_rip(machine: Machine, vcpu: Vcpu, rip: int) -> bytes:
    """The guest's instruction bytes at rip, read through its page tables."""
    sregs = vcpu.get_sregs()
    cpu = CpuView(rip, int(sregs.cs.base), int(sregs.cr0), int(sregs.cr3), int(sregs.cr4), int(sregs.efer))
    return instruction_at(machine.memory.read, cpu)
