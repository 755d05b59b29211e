"""A runner's threads, started without waiting for them to run.

`threading.Thread.start` blocks until the new thread has run, and a new thread queues for a CPU behind everything
runnable: under load a CreateVm paid five such waits in a row in its runner (vCPU, console, exits, the agent's
connection and its writer; tens of milliseconds at the median, over a hundred at the tail). A Worker's thread is
created and the caller goes on; the thread runs its job when the scheduler gets to it, which it had to anyway.
"""

from __future__ import annotations

import _thread
import sys
import threading
from collections.abc import Callable

__all__ = ["Worker", "start"]


class Worker:
    """One thread running one job; `ident`, `is_alive()` and `join()` as a threading.Thread's."""

    def __init__(self, target: Callable[[], object], name: str) -> None:
        self._done = threading.Event()
        self.name = name
        self.ident: int = _thread.start_new_thread(self._main, (target,))

    def is_alive(self) -> bool:
        """Whether the job has not ended yet (a thread not yet scheduled counts as alive)."""
        return not self._done.is_set()

    def join(self, timeout: float | None = None) -> None:
        """Waits for the job to end."""
        self._done.wait(timeout)

    def _main(self, target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException:  # reported as a threading.Thread's would be
            threading.excepthook(threading.ExceptHookArgs((*sys.exc_info(), None)))
        finally:
            self._done.set()


def start(target: Callable[[], object], name: str) -> Worker:
    """Runs `target` on a new thread named `name` (in Worker.name; the thread is a daemon: it does not hold up the
    process's exit), without waiting for it to run."""
    return Worker(target, name)
