"""A new VM: its Placement claim, its runner, its record and the first greeting, all of it or none of it.

The record is written while the agent greets the runner (a writer thread and the runner work at once); the runner's
first events wait until the record is on disk, so no watcher hears of a VM that a restarted agent would not know.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kvmplat.agent.registry import recovery
from kvmplat.v1 import agent_pb2 as pb

if TYPE_CHECKING:
    from kvmplat.agent.registry.controller import Controller, VmRecord

__all__ = ["build"]


async def build(c: Controller, spec: pb.VmSpec, effective: pb.EffectivePlatform, cpuid: list[list[int]]) -> VmRecord:
    """Claims, spawns the runner, records the VM and connects to it (the name was put in `c.creating` before)."""
    from kvmplat.agent.registry.controller import VmRecord

    try:
        await c.claim(spec)
        rec = VmRecord(spec=spec, effective=effective, socket=c.store.socket_path(spec.name))
        rec.pid = await c.spawn(spec, c.runner_config(rec, cpuid))
        await _record_and_connect(c, rec)
    finally:
        c.creating.discard(spec.name)
        c.pending.pop(spec.name, None)
    return rec


async def _record_and_connect(c: Controller, rec: VmRecord) -> None:
    rec.held = []
    recorded, connected = await asyncio.gather(
        recovery.record_new(c, rec), c.connect(rec, since=0), return_exceptions=True
    )
    held, rec.held = rec.held, None
    if isinstance(recorded, BaseException):
        if rec.runner is not None:
            await rec.runner.close()
        raise recorded
    c.vms[rec.name] = rec
    for e in held:
        c.on_event(rec, e)
    if isinstance(connected, BaseException):
        raise connected
