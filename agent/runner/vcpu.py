"""One thread per vCPU, running the C fast loop, parked and kicked on request.

Pause and stop are race-free: the controller sets the wanted mode, then `immediate_exit`, then signals the thread
(SIGUSR1). A thread about to enter KVM_RUN returns at once because of `immediate_exit`; a thread inside it is
interrupted by the signal. A parked thread is outside KVM_RUN by construction.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from kvmplat.agent.kvm.devices import Devices, FastExit, VcpuStats
from kvmplat.agent.kvm.fds import Vcpu
from kvmplat.agent.runner import workers
from kvmplat.agent.runner.exits import Exit, Outcome, Verdict, classify

__all__ = ["GUEST_NICE", "KICK_SIGNAL", "Mode", "VcpuThread", "install_kick_handler"]

KICK_SIGNAL = signal.SIGUSR1
GUEST_NICE = 5  # the niceness of each vCPU thread: a busy guest never delays its runner's answers to the agent


def install_kick_handler() -> None:
    """A no-op handler, so the kick interrupts KVM_RUN instead of killing the process (main thread only)."""
    signal.signal(KICK_SIGNAL, lambda _sig, _frame: None)


class Mode(enum.Enum):
    """What the controller wants the vCPU to do."""

    RUN = "run"
    PAUSE = "pause"
    STOP = "stop"


class VcpuThread:
    """Runs one vCPU; reports exits the fast path did not absorb to `on_exit`."""

    def __init__(self, vcpu: Vcpu, devices: Devices, on_exit: Callable[[int, Outcome], None]) -> None:
        self.vcpu = vcpu
        self.stats = VcpuStats()
        self._devices = devices
        self._on_exit = on_exit
        self._cond = threading.Condition()
        self._mode = Mode.PAUSE
        self._parked = True
        self._thread = workers.start(self._main, f"vcpu{vcpu.index}")

    def set_mode(self, mode: Mode) -> None:
        """Asks for `mode`; kicks the vCPU out of KVM_RUN unless it should keep running."""
        with self._cond:
            self._mode = mode
            run = self.vcpu.run_struct
            if run is not None:
                run.immediate_exit = 0 if mode is Mode.RUN else 1
            self._cond.notify_all()
        if mode is not Mode.RUN and self._thread.is_alive() and self._thread.ident is not None:
            signal.pthread_kill(self._thread.ident, KICK_SIGNAL)

    def wait_parked(self, timeout: float = 5.0) -> bool:
        """Waits until the thread is outside KVM_RUN (parked or finished)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._parked or not self._thread.is_alive(), timeout)

    def join(self, timeout: float = 5.0) -> bool:
        """Waits for the thread to end (after STOP); True when it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        with contextlib.suppress(OSError):  # guest work yields to control work (this runner's requests, the agent)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), GUEST_NICE)
        run = self.vcpu.run_struct
        while self._await_run():
            code = self._devices.run(self.vcpu, self.stats)
            outcome = classify(_exit_of(code, run))
            if outcome.verdict is Verdict.KICKED:
                continue
            with self._cond:
                self._mode = Mode.PAUSE  # the guest has ended; wait for the controller's STOP
            self._on_exit(self.vcpu.index, outcome)

    def _await_run(self) -> bool:
        """Parks until the mode is RUN (True) or STOP (False)."""
        with self._cond:
            self._parked = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._mode is not Mode.PAUSE)
            if self._mode is Mode.STOP:
                return False
            self._parked = False
            return True


def _exit_of(code: int, run: Any) -> Exit:
    """The fields of kvm_run that classify() needs, copied out of the shared mapping."""
    if code != FastExit.SLOW:
        return Exit(code)
    return Exit(
        code,
        reason=run.exit_reason,
        suberror=run.internal.suberror,
        data=tuple(run.internal.data[i] for i in range(min(run.internal.ndata, 16))),
        event_type=run.system_event.type,
        hardware_reason=run.fail_entry.hardware_entry_failure_reason,
    )
