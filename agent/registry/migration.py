"""Live migration between agents: MigrateVm (source) and ReceiveVm (target), behind the controller.

    source                                         target
    offer (spec, effective platform, CPUID) ──>    same platform here? (compat.check_incoming) else refused
                                          <──      accepted: a silent incoming runner, memory mapped
    RUNNING -> MIGRATING, dirty logging on
    round 1: every page; round n: the pages dirtied during round n-1, until the rest would take at most
    DOWNTIME_LIMIT_S at the measured bandwidth; a guest that dirties faster than that is slowed down (auto-converge)
    vCPUs parked; last dirty pages; state ──>      state loaded, vCPUs parked
    commit (first event number) ──>         <──    prepared
                                                   MIGRATING -> RUNNING: listed, running (only after a good load)
                                          <──      committed
    MIGRATING -> STOPPED ("migrated to ..."), destroyed

Any failure before the commit resumes the guest on the source as it was (MIGRATING -> RUNNING) and the target
destroys its copy (it keeps none unless it received the commit), so there are never two copies running. If the
commit's answer is lost, the source asks the target whether it runs the VM before it resumes its own copy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from kvmplat.agent.errors import FailedPrecondition, InvalidArgument, KvmplatError, Unavailable
from kvmplat.agent.registry.compat import check_incoming
from kvmplat.agent.registry.guestmem import PAGE, GuestMapping, count_bits
from kvmplat.agent.registry.incoming import IncomingVm
from kvmplat.agent.registry.lifecycle import State
from kvmplat.agent.registry.peer import PeerError, peer_channel
from kvmplat.agent.registry.runnerlink import RunnerClient
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg

if TYPE_CHECKING:
    from kvmplat.agent.registry.controller import Controller, VmRecord

__all__ = ["DOWNTIME_LIMIT_S", "MAX_ROUNDS", "migrate", "receive"]

DOWNTIME_LIMIT_S = 0.3  # stop and copy once the rest would take this long at the measured bandwidth (QEMU's default)
MAX_ROUNDS = 60  # then stop and copy whatever is left
THROTTLE_FIRST, THROTTLE_STEP, THROTTLE_MAX = 20, 10, 99  # auto-converge, as QEMU's cpu-throttle-* defaults
RATE_SAMPLE = 4 << 20  # a round that sent less than this does not update the measured bandwidth
MOVE_TIMEOUT = 3600.0


class _Source:
    """One outgoing migration's bookkeeping."""

    def __init__(self, c: Controller, rec: VmRecord, target: str) -> None:
        self.c, self.rec, self.target = c, rec, target
        self.t0 = time.monotonic()
        self.bytes_sent = 0
        self.round = 0
        self.dirty_pages = 0
        self.expected_s = 0.0
        self.rate = 0.0  # bytes/s of the last round that sent enough to tell
        self.throttle = 0  # percent
        self.high = 0  # rounds in a row that dirtied more than half of what they sent
        self.mapping: GuestMapping | None = None
        self.call: Any = None
        self.peer: Any = None  # the grpc.aio channel to the target

    def progress(self, phase: str, **extra: Any) -> pb.MigrationProgress:
        m = self.mapping
        return pb.MigrationProgress(
            phase=phase,
            round=self.round,
            bytes_sent=self.bytes_sent,
            dirty_pages=self.dirty_pages,
            expected_downtime_ms=int(self.expected_s * 1000),
            pages_sent=m.pages_sent if m else 0,
            zero_pages=m.zero_pages if m else 0,
            throttle_percent=self.throttle,
            **extra,
        )

    async def send(self, packet: pb.MigrationPacket) -> None:
        await self.call.write(packet)
        self.bytes_sent += packet.ByteSize()

    async def expect(self, kind: str) -> pb.MigrationReply:
        reply = await self.call.read()
        if reply is grpc.aio.EOF or reply.WhichOneof("kind") != kind:
            raise Unavailable(f"the target {self.target} ended the migration before it was {kind}")
        return reply  # type: ignore[no-any-return]

    async def send_pages(self, dirty: bytes | None) -> None:
        """Sends the pages marked in `dirty`, packing the next chunk (in C, off the loop) while one is sent."""
        assert self.mapping is not None
        pages = self.mapping.pack(dirty)
        task = asyncio.ensure_future(asyncio.to_thread(next, pages, None))
        try:
            while (chunk := await task) is not None:
                task = asyncio.ensure_future(asyncio.to_thread(next, pages, None))
                await self.send(pb.MigrationPacket(pages=chunk))
        finally:
            with contextlib.suppress(BaseException):
                await task  # never leave the packer running on a mapping about to close

    @property
    def runner(self) -> RunnerClient:
        """The VM's runner; Unavailable when it is gone."""
        if self.rec.runner is None or self.rec.runner.closed:
            raise Unavailable(f"VM {self.rec.name!r} lost its runner during the migration")
        return self.rec.runner


async def _offer(s: _Source) -> None:
    mem = await s.runner.memory()
    rows = [pb.CpuidEntry(**dict(zip(pb.CpuidEntry.DESCRIPTOR.fields_by_name, r, strict=False))) for r in mem.cpuid]
    offer = pb.MigrationOffer(
        spec=s.rec.spec,
        effective_platform=s.rec.effective,
        cpuid=rows,
        arch=s.c.platforms.host.arch,
        source=s.c.address,
    )
    s.call = pbg.AgentStub(s.peer).ReceiveVm(timeout=MOVE_TIMEOUT)  # type: ignore[no-untyped-call]
    await s.send(pb.MigrationPacket(offer=offer))
    await s.expect("accepted")
    s.mapping = GuestMapping(mem.pid, mem.fd, mem.size)


async def _precopy(s: _Source) -> AsyncIterator[tuple[pb.MigrationProgress, bytes]]:
    """Rounds of copying while the guest runs; yields progress and the pages still to send."""
    dirty: bytes | None = None
    while True:
        s.round += 1
        start, before = time.monotonic(), s.bytes_sent
        await s.send_pages(dirty)
        sent = s.bytes_sent - before
        if sent >= RATE_SAMPLE or not s.rate:
            s.rate = max(sent, PAGE) / max(time.monotonic() - start, 1e-6)
        dirty = base64.b64decode((await s.runner.dirty()).bitmap)
        s.dirty_pages = count_bits(dirty)
        s.expected_s = s.dirty_pages * PAGE / s.rate
        yield s.progress("precopy"), dirty
        if s.expected_s <= DOWNTIME_LIMIT_S or s.round >= MAX_ROUNDS:
            return
        await _auto_converge(s, sent)


async def _auto_converge(s: _Source, sent: int) -> None:
    """QEMU's rule: after two rounds that each dirtied more than half of what they sent, slow the guest down more."""
    s.high = s.high + 1 if s.dirty_pages * PAGE > sent // 2 else 0
    if s.high < 2 or s.throttle >= THROTTLE_MAX:
        return
    s.high = 0
    s.throttle = min(THROTTLE_MAX, s.throttle + THROTTLE_STEP if s.throttle else THROTTLE_FIRST)
    await s.runner.throttle(s.throttle)


def _or(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(len(a), "little")


async def _switch(s: _Source, pending: bytes) -> float:
    """Stop and copy; returns when the target runs the VM (the downtime in seconds)."""
    t_stop = time.monotonic()
    final = await s.runner.migrate_stop()
    await s.send_pages(_or(pending, base64.b64decode(final.bitmap)))
    state = {"state": final.state, "milestones": {}}
    await s.send(pb.MigrationPacket(state=json.dumps(state, separators=(",", ":")).encode()))
    first_seq = final.last_seq + 2  # the source's own last event ("migrated to ...") takes the one between
    try:  # the commit follows at once (one round trip less): the target commits only once the state loaded
        await s.send(pb.MigrationPacket(commit=pb.MigrationCommit(first_seq=first_seq)))
        await s.expect("prepared")
        await s.expect("committed")
    except (grpc.RpcError, KvmplatError) as e:
        if not await _target_runs(s):
            raise _peer_error(s, e) from None
    return time.monotonic() - t_stop


async def _target_runs(s: _Source) -> bool:
    """After a lost commit answer: whether the target runs the VM (then the source must not)."""
    stub = pbg.AgentStub(s.peer)  # type: ignore[no-untyped-call]
    try:
        vm = await stub.GetVm(pb.VmRequest(name=s.rec.name), timeout=10.0)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise Unavailable(
            f"the target {s.target} did not confirm the migration and cannot be asked ({e.details()}); VM "
            f"{s.rec.name!r} stays stopped here (MIGRATING) so that it never runs twice: check the target"
        ) from None
    return bool(vm.state in (pb.RUNNING, pb.PAUSED))


def _peer_error(s: _Source, e: BaseException) -> KvmplatError:
    if isinstance(e, KvmplatError):
        return e
    if isinstance(e, grpc.RpcError):
        return PeerError.of(e, s.target)
    return Unavailable(f"migration to {s.target} failed: {e or type(e).__name__}")


async def migrate(c: Controller, name: str, target: str) -> AsyncIterator[pb.MigrationProgress]:
    """Moves RUNNING VM `name` to the agent at `target`; progress as it goes, "done" last."""
    rec = c.idle(name)
    if rec.state is not State.RUNNING:
        raise FailedPrecondition(f"VM {name!r} is {rec.state.name}: live migration moves RUNNING VMs")
    s = _Source(c, rec, target)
    rec.moving = f"migrating to {target}"
    began = committed = False
    try:
        async with peer_channel(c.peer_tls, target) as peer:
            s.peer = peer
            await _offer(s)
            yield s.progress("offer")
            await s.runner.migrate_begin(target)
            began = True
            pending = b""
            async for progress, dirty in _precopy(s):
                pending = dirty
                yield progress
            yield s.progress("stop-and-copy")
            downtime = await _switch(s, pending)
            total = time.monotonic() - s.t0  # the VM runs on the target: what follows is the source's cleanup
            committed = True
            with contextlib.suppress(grpc.RpcError):
                await s.call.done_writing()
        await s.runner.migrate_done(target)
        rec.moving = ""
        await c.destroy(name)
        yield s.progress("done", downtime_ms=int(downtime * 1000), total_ms=int(total * 1000), target=target)
    except BaseException as e:  # any failure (the target's, the network's, ours, a cancelled call) resumes at home
        if began and not committed:
            with contextlib.suppress(KvmplatError):
                await asyncio.shield(s.runner.migrate_abort(str(_peer_error(s, e))))
        if s.call is not None:
            s.call.cancel()
        if not isinstance(e, Exception):
            raise
        raise _peer_error(s, e) from None
    finally:
        rec.moving = ""
        if s.mapping is not None:
            s.mapping.close()


async def receive(c: Controller, packets: AsyncIterator[pb.MigrationPacket]) -> AsyncIterator[Any]:
    """The target's side: yields "accepted", "prepared", then the arrived VmRecord."""
    it = aiter(packets)
    first = await anext(it, None)
    if first is None or first.WhichOneof("kind") != "offer":
        raise InvalidArgument("ReceiveVm: the first message must be the offer")
    offer = first.offer
    cpuid = [[e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] for e in offer.cpuid]
    check_incoming(c.platforms, offer.spec.name, offer.spec, offer.effective_platform, cpuid, offer.arch)
    vm = IncomingVm(c, offer.spec, offer.effective_platform, cpuid, f"arriving from {offer.source}")
    done = False
    writing: asyncio.Future[int] | None = None  # the previous chunk, written while the next one arrives
    try:
        await vm.start()
        yield "accepted"
        async for p in it:
            kind = p.WhichOneof("kind")
            if writing is not None:
                await writing
                writing = None
            if kind == "pages":
                writing = asyncio.ensure_future(vm.write_pages(p.pages))
            elif kind == "state":
                st = json.loads(p.state)
                await vm.load(st["state"], st.get("milestones"))
                yield "prepared"
            elif kind == "commit":
                rec = await vm.arrive(p.commit.first_seq, False, f"migrated from {offer.source}")
                done = True
                yield rec
                return
        raise Unavailable("the source ended the migration before committing it")
    finally:
        if writing is not None:
            with contextlib.suppress(BaseException):
                await writing  # the memory must stay mapped until its writer is done
        if not done:
            await asyncio.shield(vm.abort())
