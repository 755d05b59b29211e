"""VM records written off the event loop by a few threads of their own, so a slow disk delays records, never RPCs.

A rename over an existing file on ext4 can wait for the journal (tens of milliseconds under load); done on the
agent's event loop, every RPC and event stream waited with it. Writes of the same VM coalesce while they wait:
only its newest record (or its removal) is written, durably if any of the coalesced writes asked for that, and
every caller's future completes with that write. One VM's writes are never in flight together, so they land in
order; different VMs' files are independent, so they go in parallel (fsyncs share journal commits), durable
writes first (a caller waits for those: CreateVm, a new block of sequence numbers).

What a SIGKILL of the agent can lose is a queued non-durable update: the runner holds the truth and says it at
re-adoption, and the record's spec was written durably at create (the caller waited for that write).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from kvmplat.agent.registry.store import Store

__all__ = ["RecordWriter"]

log = logging.getLogger("kvmplat.agent.registry.store")


@dataclass
class _Pending:
    record: dict[str, Any] | None  # None: remove the record
    durable: bool
    futures: list[Future[None]]  # every caller whose write this one is
    first: bool = False  # a caller waits for it: it goes before the writes nobody waits for


class RecordWriter:
    """Writes and removes VM records through `store` on `threads` threads of its own."""

    def __init__(self, store: Store, threads: int = 4) -> None:
        self.store = store
        self._pending: dict[str, _Pending] = {}
        self._busy: set[str] = set()  # VMs with a write in flight
        self._cv = threading.Condition()
        self._closing = False
        self._threads = [threading.Thread(target=self._run, name="records", daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def save(self, name: str, record: dict[str, Any], durable: bool = False, first: bool = False) -> Future[None]:
        """Queues VM `name`'s record; the future completes once it is on disk (or with the OSError that stopped it).
        Durable writes, and those with `first` (a caller waits), go before the others."""
        return self._submit(name, record, durable, first)

    def delete(self, name: str, first: bool = False) -> Future[None]:
        """Queues the removal of VM `name`'s record (before the writes nobody waits for with `first`)."""
        return self._submit(name, None, False, first)

    def _submit(self, name: str, record: dict[str, Any] | None, durable: bool, first: bool = False) -> Future[None]:
        done: Future[None] = Future()
        with self._cv:
            if self._closing:
                raise RuntimeError("the record writer is closed")
            old = self._pending.pop(name, None)  # re-inserted last: the newest write of a VM goes after the others
            if old is None:
                self._pending[name] = _Pending(record, durable, [done], first)
            else:
                both = [*old.futures, done]
                self._pending[name] = _Pending(record, durable or old.durable, both, first or old.first)
            self._cv.notify()  # one writer: waking all of them for one record cost each write a few thread switches
        return done

    def _next(self) -> str | None:
        """The VM whose write goes next: a durable or waited-for one first, else the longest waiting; none of those
        in flight."""
        free = [name for name in self._pending if name not in self._busy]
        urgent = (n for n in free if self._pending[n].durable or self._pending[n].first)
        return next(urgent, free[0] if free else None)

    def _run(self) -> None:
        while True:
            with self._cv:
                while (name := self._next()) is None:
                    if self._closing and not self._pending:
                        return
                    self._cv.wait()
                job = self._pending.pop(name)
                self._busy.add(name)
            try:
                if job.record is None:
                    self.store.delete_record(name)
                else:
                    self.store.save(name, job.record, durable=job.durable)
            except Exception as e:  # OSError (disk full, ...); anything else must not end this thread either
                log.error("VM %s: cannot write its record to %s: %s", name, self.store.vms, e)
                for f in job.futures:
                    f.set_exception(e)
            else:
                for f in job.futures:
                    f.set_result(None)
            with self._cv:
                self._busy.discard(name)
                if name in self._pending:  # a newer write of this VM waited for this one
                    self._cv.notify()

    def close(self) -> None:
        """Writes what is queued, then ends the threads."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()
