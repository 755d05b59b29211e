"""agent/runner/workers.py: a Worker runs its job on a thread of its own, knows that thread's identifier from the
start (vCPU kicks use it), is alive until the job ends and can be joined; signals reach the thread it names."""

from __future__ import annotations

import signal
import threading

import pytest
from kvmplat.agent.runner import workers


def test_a_worker_runs_its_job_and_joins() -> None:
    go, ran = threading.Event(), []
    w = workers.start(lambda: (go.wait(10), ran.append(threading.get_ident())), "job")
    assert w.name == "job" and w.is_alive() and w.ident
    go.set()
    w.join(10)
    assert not w.is_alive() and ran == [w.ident]


def test_a_worker_that_fails_is_reported_as_a_thread_and_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(args.exc_value))

    def boom() -> None:
        raise RuntimeError("the job failed")

    w = workers.start(boom, "boom")
    w.join(10)
    assert not w.is_alive() and [str(e) for e in reported] == ["the job failed"]


def test_a_signal_sent_to_its_ident_interrupts_its_job() -> None:
    got: list[int] = []
    old = signal.signal(signal.SIGUSR2, lambda sig, _frame: got.append(sig))
    try:
        started, done = threading.Event(), threading.Event()

        def wait_for_kick() -> None:
            started.set()
            signal.sigtimedwait([signal.SIGUSR2], 10) and done.set()

        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
        try:
            w = workers.start(wait_for_kick, "kicked")
            started.wait(10)
            signal.pthread_kill(w.ident, signal.SIGUSR2)
            w.join(10)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR2])
        assert done.is_set()
    finally:
        signal.signal(signal.SIGUSR2, old)
