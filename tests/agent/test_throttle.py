"""Auto-converge's throttle (agent/runner/throttle.py): it alternates the vCPU threads between paused and running
while set, and leaves them as asked when it ends. The threads here record the modes they are asked for (what the
throttle does to a real vCPU thread is VcpuThread's own pause and kick, tested with real guests)."""

from __future__ import annotations

import itertools
import threading
import time

from kvmplat.agent.runner.throttle import Throttle
from kvmplat.agent.runner.vcpu import Mode


class Recorder:
    """Stands in for a VcpuThread: remembers every mode it is asked for."""

    def __init__(self) -> None:
        self.modes: list[Mode] = []
        self.changed = threading.Event()

    def set_mode(self, mode: Mode) -> None:
        self.modes.append(mode)
        self.changed.set()


def _wait_for(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the throttle never got there"
        time.sleep(0.005)


def test_a_set_throttle_alternates_pause_and_run_and_resumes_at_the_end() -> None:
    threads = [Recorder(), Recorder()]
    t = Throttle(threads)  # type: ignore[arg-type]
    t.set(50)
    _wait_for(lambda: all(Mode.RUN in r.modes for r in threads))
    t.end(resume=True)
    for r in threads:
        assert r.modes[0] is Mode.PAUSE and r.modes[-1] is Mode.RUN
        periods = r.modes[:-1]  # the last one is end()'s resume
        assert all(a is not b for a, b in itertools.pairwise(periods))  # strictly alternating


def test_ending_without_resume_leaves_the_threads_to_the_caller() -> None:
    r = Recorder()
    t = Throttle([r])  # type: ignore[list-item]
    t.set(99)
    _wait_for(lambda: bool(r.modes))
    t.end(resume=False)  # the throttling thread is gone when it returns: nothing changes the modes after
    n = len(r.modes)
    t.end(resume=False)  # idempotent
    assert len(r.modes) == n and Mode.PAUSE in r.modes


def test_percent_is_clamped_and_zero_starts_nothing() -> None:
    r = Recorder()
    t = Throttle([r])  # type: ignore[list-item]
    t.set(0)
    t.set(-5)
    assert t.percent == 0
    t.end(resume=False)
    assert r.modes == []
    t.set(250)
    assert t.percent == 99
    t.end(resume=True)
    assert r.modes[-1] is Mode.RUN
