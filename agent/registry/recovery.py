"""What keeps the VM records and the runners in step when the agent dies at a bad moment or its disk is full: a new
VM's record is written before anything can depend on it (refused, its runner ended, when the disk is full), and a
restarted agent ends what its predecessor left half done (see strays.py) before it adopts the runners, waiting for
those recorded while they were still building their machines (creation.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from kvmplat.agent.errors import KvmplatError, ResourceExhausted
from kvmplat.agent.registry.lifecycle import Event
from kvmplat.agent.registry.runnerlink import RunnerClient, RunnerLost
from kvmplat.agent.registry.strays import alive, end_strays, runners_of

if TYPE_CHECKING:
    from kvmplat.agent.registry.controller import Controller, VmRecord

__all__ = ["BUILD_WAIT", "before_adoption", "reconnect", "record_new"]

log = logging.getLogger("kvmplat.agent")
BUILD_WAIT = 10.0  # seconds a restarted agent waits for a live recorded runner to listen (it may still be building)


async def record_new(c: Controller, rec: VmRecord, saving: Future[None]) -> None:
    """Waits for a new VM's durable record (`saving`: its write, begun before any event can arrive); when it cannot
    be written (disk full), the VM is refused and its runner ended: a VM the agent could not re-adopt after a
    restart is not created."""
    try:
        await asyncio.wrap_future(saving)
    except OSError as e:
        await _end_runner(c, rec)
        if c.claims is not None:
            await c.claims.release(rec.spec.uuid, rec.name)
        raise ResourceExhausted(
            f"cannot record VM {rec.name!r} in {c.store.vms}: {e.strerror or e}; it was not created"
        ) from None


async def before_adoption(c: Controller, recs: list[VmRecord]) -> list[VmRecord]:
    """Ends the old template, unrecorded runners and unnamed sockets, and finishes the destroys an earlier agent
    had begun (their records are marked); returns the records left to adopt."""
    pids, names = [r.pid for r in recs], [r.name for r in recs]
    await asyncio.to_thread(end_strays, str(c.store.root), pids, names, c.template.pid)
    for rec in [r for r in recs if r.destroying]:
        del c.vms[rec.name]
        await _end_runner(c, rec)
        with contextlib.suppress(OSError):
            await asyncio.wrap_future(c.records.delete(rec.name))
        log.info("finished destroying VM %s (an earlier agent stopped in the middle)", rec.name)
    return [r for r in recs if not r.destroying]


async def reconnect(c: Controller, rec: VmRecord) -> None:
    """Connects to a recorded VM's runner after an agent restart. One that lives but does not listen yet (a spare
    recorded as it was handed its config, whose agent died while it built the machine) is waited for while it lives,
    at most BUILD_WAIT. RunnerLost when it is gone (or never listened)."""
    deadline = time.monotonic() + BUILD_WAIT
    while True:
        try:
            await c.connect(rec, since=0)
            return
        except RunnerLost:
            still = rec.runner is None and alive(str(c.store.root), rec.pid)
            if not still or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.02)


async def _end_runner(c: Controller, rec: VmRecord) -> None:
    """Ends the runner of a VM that is not (or no longer) to be recorded."""
    try:
        runner = await RunnerClient.connect(rec.socket, lambda e: None, lambda: None)
        with contextlib.suppress(KvmplatError):
            await runner.request(Event.DESTROY, timeout=5.0)
        await runner.close()
    except KvmplatError:
        if rec.pid in runners_of(str(c.store.root)):  # never a pid that is no longer our runner's
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
    c.store.unlink_socket(rec.name)
