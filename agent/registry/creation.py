"""A new VM: its Placement claim, its runner, its record and the first greeting, all of it or none of it.

The record is written while the runner builds the machine: a spare is taken (its pid is known before it is handed the
config), the writer thread writes the record naming it, and the spare builds at the same time; a runner forked
instead (no spare ready) is recorded once it listens, while the agent greets it. The runner's first events wait until
the record is on disk, so no watcher hears of a VM that a restarted agent would not know; a restarted agent waits for
a recorded runner still building (recovery.reconnect). A runner that fails to start takes its record with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Future
from typing import TYPE_CHECKING

from kvmplat.agent.registry import recovery
from kvmplat.v1 import agent_pb2 as pb

if TYPE_CHECKING:
    from kvmplat.agent.registry.controller import Controller, VmRecord
    from kvmplat.agent.registry.spares import Streams

__all__ = ["build", "start"]

# The event loop holds tasks only weakly: a build whose caller went away (cancelled, the build shielded) and that
# waits on something only it refers to (a spare's reader) would be collected half done, leaving a runner without a
# record. Builds are held here until they end.
_HELD: set[asyncio.Task[VmRecord]] = set()


def start(
    c: Controller, spec: pb.VmSpec, effective: pb.EffectivePlatform, cpuid: list[list[int]]
) -> asyncio.Task[VmRecord]:
    """`build` as a task of its own, held until it ends (its caller may stop waiting for it; the build goes on)."""
    task = asyncio.get_running_loop().create_task(build(c, spec, effective, cpuid))
    _HELD.add(task)
    task.add_done_callback(_HELD.discard)
    return task


async def build(c: Controller, spec: pb.VmSpec, effective: pb.EffectivePlatform, cpuid: list[list[int]]) -> VmRecord:
    """Claims, spawns the runner, records the VM and connects to it (the name was put in `c.creating` before)."""
    from kvmplat.agent.registry.controller import VmRecord

    try:
        await c.claim(spec)
        rec = VmRecord(spec=spec, effective=effective, socket=c.store.socket_path(spec.name))
        rec.held = []
        saving: list[Future[None]] = []

        def record(pid: int) -> None:
            rec.pid = pid
            saving.append(c.records.save(rec.name, rec.to_json(), durable=True))

        try:
            started = await c.spawn(spec, c.runner_config(rec, cpuid), record)
        except BaseException:
            if saving:
                with contextlib.suppress(OSError):
                    await asyncio.wrap_future(c.records.delete(rec.name, first=True))
            raise
        if started.pid != rec.pid:  # forked: no spare was ready (or the one taken died as it was handed the config)
            record(started.pid)
        await _connect(c, rec, started.streams, saving[-1])
    finally:
        c.creating.discard(spec.name)
        c.pending.pop(spec.name, None)
    return rec


async def _connect(c: Controller, rec: VmRecord, streams: Streams | None, saving: Future[None]) -> None:
    # the greeting goes while the writer thread finishes the record, without a task of its own for either (each
    # task's start and end is a turn of the event loop, and under load every turn waits behind the others' work)
    connected: Exception | None = None
    try:
        await c.connect(rec, since=0, streams=streams)
    except Exception as e:
        connected = e
    try:
        await recovery.record_new(c, rec, saving)
    except Exception:
        if rec.runner is not None:
            await rec.runner.close()
        raise
    finally:
        held, rec.held = rec.held, None
    c.vms[rec.name] = rec
    for event in held or ():
        c.on_event(rec, event)
    if connected is not None:
        raise connected
