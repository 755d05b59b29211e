"""SnapshotVm and RestoreVm behind the controller: a PAUSED VM out as a snapshot stream, a snapshot stream in as a
VM. A restore spools the whole stream to a private file and checks it (structure, SHA-256, this host's platform)
before anything is built; then the VM is built from it, RUNNING (or PAUSED on request)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import tempfile
import time
from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING, Any

from google.protobuf import json_format
from kvmplat.agent import __version__
from kvmplat.agent.errors import FailedPrecondition, InvalidArgument
from kvmplat.agent.registry import snapshot as fmt
from kvmplat.agent.registry.compat import check_incoming
from kvmplat.agent.registry.guestmem import GuestMapping
from kvmplat.agent.registry.incoming import IncomingVm
from kvmplat.agent.registry.lifecycle import State
from kvmplat.v1 import agent_pb2 as pb

if TYPE_CHECKING:
    from kvmplat.agent.registry.controller import Controller, VmRecord

__all__ = ["header_of", "restore", "snapshot"]

SPOOL_EXTRA = 64 << 20  # a snapshot may exceed its memory by this much (state, headers, page records)


def header_of(c: Controller, rec: VmRecord, cpuid: list[list[int]], last_seq: int) -> dict[str, Any]:
    """A snapshot's header for `rec`."""
    return {
        "format": fmt.FORMAT_VERSION,
        "name": rec.name,
        "spec": json_format.MessageToDict(rec.spec),
        "effective": json_format.MessageToDict(rec.effective),
        "cpuid": cpuid,
        "arch": platform.machine(),
        "accel": c.platforms.host.accel,
        "vcpus": rec.spec.vcpus,
        "memory_bytes": rec.spec.memory_mib << 20,
        "last_seq": last_seq,
        "state": rec.state.name,
        "time": time.time(),
        "agent_version": __version__,
    }


async def snapshot(c: Controller, name: str) -> AsyncIterator[bytes]:
    """The snapshot of PAUSED VM `name`, as the bytes of the file in pieces."""
    rec = c.idle(name)
    if rec.state is not State.PAUSED or rec.runner is None:
        raise FailedPrecondition(f"VM {name!r} is {rec.state.name}: a snapshot needs it PAUSED (pause it first)")
    rec.moving = "being snapshotted"
    mapping: GuestMapping | None = None
    try:
        frozen = await rec.runner.freeze()
        mem = await rec.runner.memory()
        mapping = GuestMapping(mem.pid, mem.fd, mem.size)
        w = fmt.SnapshotWriter()
        header = header_of(c, rec, [list(row) for row in mem.cpuid], frozen.last_seq)
        state = frozen.state | {"milestones": frozen.milestones}
        yield w.prelude() + w.json_section(fmt.HEADER, header) + w.json_section(fmt.STATE, state)
        pages = mapping.pack()
        while (chunk := await asyncio.to_thread(next, pages, None)) is not None:
            yield w.section(fmt.PAGES, chunk)
        yield w.end()
        rec.saved = True
    finally:
        rec.moving = ""
        if mapping is not None:
            mapping.close()


async def _spool(c: Controller, chunks: AsyncIterator[bytes], f: IO[bytes]) -> None:
    limit = (c.limits.max_memory_mib << 20) + SPOOL_EXTRA
    size = 0
    async for data in chunks:
        size += len(data)
        if size > limit:
            raise InvalidArgument(f"the snapshot is larger than any VM this host may run ({limit >> 20} MiB)")
        await asyncio.to_thread(f.write, data)
    await asyncio.to_thread(f.flush)


def _incoming(c: Controller, snap: fmt.Snapshot, name: str) -> IncomingVm:
    """The VM a checked snapshot describes, refused here if this host cannot give it the same platform."""
    h = snap.header
    try:
        spec = json_format.ParseDict(h["spec"], pb.VmSpec())
        effective = json_format.ParseDict(h["effective"], pb.EffectivePlatform())
        cpuid = [[int(x) for x in row] for row in h["cpuid"]]
    except (KeyError, TypeError, ValueError, json_format.ParseError) as e:
        raise InvalidArgument(f"not a usable kvmplat snapshot: its header is incomplete ({e})") from None
    if h.get("accel") != c.platforms.host.accel:
        raise FailedPrecondition(
            f"the snapshot was taken under {h.get('accel')}; this host runs {c.platforms.host.accel}: restore it on a "
            "host of the same kind, or migrate the VM live"
        )
    spec.name = name or spec.name
    check_incoming(c.platforms, spec.name, spec, effective, cpuid, str(h.get("arch")))
    return IncomingVm(c, spec, effective, cpuid, f"restoring from a snapshot of {h.get('name')!r}")


async def restore(c: Controller, name: str, paused: bool, chunks: AsyncIterator[bytes]) -> VmRecord:
    """Builds a VM from a snapshot stream, once the whole stream has been checked."""
    fd, path = tempfile.mkstemp(prefix=".restore-", dir=c.store.root)
    os.unlink(path)  # private and gone with the fd, whatever happens
    with os.fdopen(fd, "w+b") as f:
        await _spool(c, chunks, f)
        f.seek(0)
        snap = await asyncio.to_thread(fmt.read_snapshot, f)
        vm = _incoming(c, snap, name)
        try:
            await vm.start()
            pages = snap.page_chunks(f)
            while (chunk := await asyncio.to_thread(next, pages, None)) is not None:
                await vm.write_pages(chunk)
            await vm.load(snap.state, snap.state.get("milestones"))
            reason = f"restored from a snapshot of {snap.header.get('name')!r}"
            return await vm.arrive(int(snap.header.get("last_seq", 0)) + 1, paused, reason)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(vm.abort())
            raise
