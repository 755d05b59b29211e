"""A VM being built on this agent from elsewhere (a snapshot, or a live migration's source).

Its runner is made with `incoming` in its config: MIGRATING, silent, vCPUs parked. The VM is not listed until it
arrives; until then a failure destroys the runner and leaves nothing behind (no record, no socket, no events).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

from kvmplat.agent.api.validate import validate_name
from kvmplat.agent.errors import AlreadyExists, InvalidArgument, KvmplatError
from kvmplat.agent.registry.guestmem import GuestMapping
from kvmplat.agent.registry.lifecycle import Event, State
from kvmplat.agent.registry.runnerlink import RunnerClient
from kvmplat.v1 import agent_pb2 as pb

if TYPE_CHECKING:
    from kvmplat.agent.registry.controller import Controller, VmRecord

__all__ = ["IncomingVm"]


class IncomingVm:
    """One VM under construction from a frozen state; `abort()` on any failure."""

    def __init__(
        self, c: Controller, spec: pb.VmSpec, effective: pb.EffectivePlatform, cpuid: list[list[int]], why: str
    ) -> None:
        self.c, self.spec, self.effective, self.cpuid, self.why = c, spec, effective, cpuid, why
        self.rec: VmRecord | None = None
        self.memory: GuestMapping | None = None
        self.registered = False
        self.claimed = False  # with Placement: its resources are claimed on this agent's provider

    def _check(self) -> None:
        validate_name(self.spec.name)
        lim = self.c.limits
        if not 1 <= self.spec.vcpus <= lim.max_vcpus or not 1 <= self.spec.memory_mib <= lim.max_memory_mib:
            raise InvalidArgument(
                f"VM {self.spec.name!r} needs {self.spec.vcpus} vCPUs and {self.spec.memory_mib} MiB; this host "
                f"allows at most {lim.max_vcpus} vCPUs and {lim.max_memory_mib} MiB per VM"
            )
        if self.spec.name in self.c.vms or self.spec.name in self.c.creating:
            raise AlreadyExists(f"a VM named {self.spec.name!r} exists already")

    async def start(self) -> None:
        """Reserves the name and resources, spawns the silent runner and maps its memory for writing."""
        from kvmplat.agent.registry.controller import VmRecord

        self._check()
        self.c.reserve(self.spec)
        self.c.arrival_uuid(self.spec)
        self.c.creating.add(self.spec.name)
        rec = VmRecord(spec=self.spec, effective=self.effective, socket=self.c.store.socket_path(self.spec.name))
        rec.state, rec.destroying = State.MIGRATING, False
        self.rec = rec
        self.c.incoming[self.spec.name] = rec
        await self.c.claim(self.spec, beside=True)  # beside what its UUID holds on the source
        self.claimed = True
        started = await self.c.template.spawn(self.c.runner_config(rec, self.cpuid, incoming=self.why))
        rec.pid = started.pid
        await self.c.connect(rec, since=0, streams=started.streams)
        assert rec.runner is not None
        mem = await rec.runner.memory()
        self.memory = GuestMapping(mem.pid, mem.fd, mem.size, writable=True)

    async def write_pages(self, data: bytes) -> int:
        """Writes packed page records into the VM's memory (off the event loop)."""
        assert self.memory is not None
        return await asyncio.to_thread(self.memory.unpack, data)

    async def load(self, state: dict[str, Any], milestones: dict[str, float] | None = None) -> list[str]:
        """Loads the frozen vCPU, VM and device state; returns notes on what this host refused."""
        assert self.rec is not None and self.rec.runner is not None
        loaded = await self.rec.runner.load(state, milestones or {})
        return list(loaded.notes)

    async def arrive(self, first_seq: int, paused: bool, reason: str) -> VmRecord:
        """Lists the VM and lets it run (or stay PAUSED); its first event is numbered `first_seq`."""
        rec = self.rec
        assert rec is not None and rec.runner is not None
        if self.memory is not None:
            self.memory.close()
        rec.last_seq, rec.seq_reserved = first_seq - 1, first_seq - 1 + self.c.seq_block
        rec.reason = reason
        self.c.incoming.pop(rec.name, None)
        self.c.vms[rec.name] = rec
        self.registered = True
        self.c.creating.discard(rec.name)
        await asyncio.wrap_future(self.c.records.save(rec.name, rec.to_json(), durable=True))
        await rec.runner.arrive(first_seq, paused, reason)
        return rec

    async def abort(self) -> None:
        """Destroys whatever was built: runner, socket, record (never raises)."""
        rec, self.rec = self.rec, None
        if self.memory is not None:
            self.memory.close()
        if rec is None:
            return
        if self.claimed:
            self.claimed = False
            await self.c.release_arrival(self.spec)
        self.c.creating.discard(rec.name)
        self.c.incoming.pop(rec.name, None)
        rec.destroying = True
        runner: RunnerClient | None = rec.runner
        if runner is not None and not runner.closed:
            with contextlib.suppress(KvmplatError, OSError):
                await runner.request(Event.DESTROY)
            await runner.close()
        elif rec.pid:
            with contextlib.suppress(OSError):
                os.kill(rec.pid, signal.SIGKILL)
        if self.registered and self.c.vms.get(rec.name) is rec:
            del self.c.vms[rec.name]
            self.c.records.delete(rec.name)
            self.c.bus.forget(rec.name)
        if rec.name not in self.c.vms:
            self.c.store.unlink_socket(rec.name)
