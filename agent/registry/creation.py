"""A new VM: its Placement claim, its runner, its record and the first greeting, all of it or none of it.

The record is written while the agent greets the runner (a writer thread and the runner work at once); the runner's
first events wait until the record is on disk, so no watcher hears of a VM that a restarted agent would not know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmplat.agent.registry import recovery
from kvmplat.v1 import agent_pb2 as pb

if TYPE_CHECKING:
    from kvmplat.agent.registry.controller import Controller, VmRecord
    from kvmplat.agent.registry.spares import Streams

__all__ = ["build"]


async def build(c: Controller, spec: pb.VmSpec, effective: pb.EffectivePlatform, cpuid: list[list[int]]) -> VmRecord:
    """Claims, spawns the runner, records the VM and connects to it (the name was put in `c.creating` before)."""
    from kvmplat.agent.registry.controller import VmRecord

    try:
        await c.claim(spec)
        rec = VmRecord(spec=spec, effective=effective, socket=c.store.socket_path(spec.name))
        started = await c.spawn(spec, c.runner_config(rec, cpuid))
        rec.pid = started.pid
        await _record_and_connect(c, rec, started.streams)
    finally:
        c.creating.discard(spec.name)
        c.pending.pop(spec.name, None)
    return rec


async def _record_and_connect(c: Controller, rec: VmRecord, streams: Streams | None) -> None:
    # the writer thread writes the record while this task greets the runner: no task of their own for either (each
    # task's start and end is a turn of the event loop, and under load every turn waits behind the others' work)
    rec.held = []
    saving = c.records.save(rec.name, rec.to_json(), durable=True)
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
    for event in held:
        c.on_event(rec, event)
    if connected is not None:
        raise connected
