"""The gRPC servicer: turns protos into controller calls and agent errors into statuses. No state of its own."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from kvmplat.agent import __version__
from kvmplat.agent.api import metrics
from kvmplat.agent.api.interceptors import Check, HandlerWrapper, rewrap
from kvmplat.agent.api.status import to_status
from kvmplat.agent.errors import InvalidArgument, KvmplatError
from kvmplat.agent.guest.builtin import PUBLIC_BUILTINS
from kvmplat.agent.kvm.fds import exit_reason_name
from kvmplat.agent.registry.controller import Controller, VmRecord
from kvmplat.agent.registry.lifecycle import Event, proto_value
from kvmplat.agent.runner.wire import RunnerStats
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg

__all__ = ["PRESERIALIZED", "AgentServicer", "DecodeGuard", "add_to_server"]

log = logging.getLogger("kvmplat.agent")
T = TypeVar("T")
SERVICE = pb.DESCRIPTOR.services_by_name["Agent"]
PRESERIALIZED = frozenset({"WatchEvents", "WatchEventBatches"})  # their servicer hands gRPC the response bytes
# s: a WatchEventBatches stream sends at most one message per BATCH_LINGER[0], and while it is busy (batches of more
# than one event) one per up to BATCH_LINGER[1] (registry/events.py)
BATCH_LINGER = (0.02, 0.1)
_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_to_server(servicer: AgentServicer, server: Any) -> None:
    """Registers kvmplat.v1.Agent as the generated add_AgentServicer_to_server does (same names, same messages, so
    interceptors, reflection and the generated stubs see no difference), except that the methods in PRESERIALIZED
    send the bytes their servicer writes as they are: an event is serialized once for all its watchers."""
    handlers = {}
    for m in SERVICE.methods:
        make = _HANDLER_KINDS[(m.client_streaming, m.server_streaming)]
        request = getattr(pb, m.input_type.name)
        response = getattr(pb, m.output_type.name)
        handlers[m.name] = make(
            getattr(servicer, m.name),
            request_deserializer=request.FromString,
            response_serializer=None if m.name in PRESERIALIZED else response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _rpc(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Maps agent errors to statuses; anything else is a bug, logged and reported as INTERNAL."""

    @functools.wraps(fn)
    async def wrapper(self: AgentServicer, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await fn(self, request, context)
        except KvmplatError as e:
            await context.abort_with_status(to_status(e))
        except ValueError as e:  # a malformed message the proto runtime accepted
            await context.abort_with_status(to_status(InvalidArgument(str(e))))
        raise AssertionError("unreachable")

    return metrics.instrument(wrapper)


class _Undecodable:
    """A request whose bytes the method's message type could not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:  # DecodeError and whatever else a parser raises on hostile bytes
            return _Undecodable(e)

    return parse


class DecodeGuard(HandlerWrapper):
    """Turns requests whose bytes do not parse as the method's message into INVALID_ARGUMENT, on every service.

    gRPC Python reports a request that fails to deserialize as UNKNOWN ("Unexpected DecodeError"), which reads like
    an agent fault; a corrupt message is the caller's. The method's deserializer is wrapped so that it never raises,
    and each behaviour refuses an undecodable request before the servicer sees it.
    """

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The method's handler with a deserializer that never raises and behaviours that refuse what it flagged."""
        return rewrap(
            handler,
            lambda kind: _decode_check(method, kind.startswith("stream_")),
            request_deserializer=_tolerant(handler.request_deserializer),
        )


async def _refuse(context: Any, method: str, request: _Undecodable) -> None:
    why = f"{method}: the request is not a valid protobuf message ({request.error})"
    await context.abort_with_status(to_status(InvalidArgument(why)))


def _decode_check(method: str, streaming_in: bool) -> Check:
    """Refuses an undecodable request (each one of a request stream, as it comes)."""

    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for r in requests:
            if isinstance(r, _Undecodable):
                await _refuse(context, method, r)
            yield r

    async def check(request: Any, context: Any) -> Any:
        if streaming_in:
            return checked(request, context)
        if isinstance(request, _Undecodable):
            await _refuse(context, method, request)
        return request

    return check


class AgentServicer(pbg.AgentServicer):
    """kvmplat.v1.Agent."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    @_rpc
    async def GetCapabilities(self, request: pb.GetCapabilitiesRequest, context: Any) -> pb.Capabilities:
        if request.refresh:
            await asyncio.to_thread(self.c.platforms.refresh)
            if self.c.claims is not None:  # Placement's traits follow the new measurement
                from kvmplat.agent.api.placement import published_traits

                await self.c.claims.publish_traits(published_traits(self.c))
        caps = pb.Capabilities(agent_version=__version__, builtin_payloads=list(PUBLIC_BUILTINS))
        self.c.platforms.fill_capabilities(caps)
        mem, cpus = self.c.used()
        caps.max_vcpus = self.c.limits.max_vcpus
        caps.memory_mib, caps.memory_free_mib = self.c.total_memory_mib, self.c.total_memory_mib - mem
        caps.vcpus_total, caps.vcpus_free = self.c.total_vcpus, self.c.total_vcpus - cpus
        return caps

    @_rpc
    async def CheckPlatform(self, request: pb.CheckPlatformRequest, context: Any) -> pb.CheckPlatformResponse:
        return pb.CheckPlatformResponse(effective_platform=self.c.check(request.spec, request.platform_only))

    @_rpc
    async def CreateVm(self, request: pb.CreateVmRequest, context: Any) -> pb.Vm:
        return self._vm_answered(await self.c.create(request.spec, request.start))

    async def _act(self, request: pb.VmRequest, event: Event) -> pb.Vm:
        return self._vm_answered(await self.c.act(request.name, event))

    @_rpc
    async def StartVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        return await self._act(request, Event.START)

    @_rpc
    async def PauseVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        return await self._act(request, Event.PAUSE)

    @_rpc
    async def ResumeVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        return await self._act(request, Event.RESUME)

    @_rpc
    async def StopVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        return await self._act(request, Event.STOP)

    @_rpc
    async def DestroyVm(self, request: pb.VmRequest, context: Any) -> pb.DestroyVmResponse:
        await self.c.destroy(request.name, force=request.force)
        return pb.DestroyVmResponse()

    @_rpc
    async def GetVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        return await self._vm(self.c.get(request.name))

    @_rpc
    async def ListVms(self, request: pb.ListVmsRequest, context: Any) -> pb.ListVmsResponse:
        return pb.ListVmsResponse(vms=[self._vm_base(r) for r in sorted(self.c.vms.values(), key=lambda r: r.name)])

    @_rpc
    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Any) -> None:
        """Writes each event's bytes as the bus serialized them once for every watcher (see `add_to_server`)."""
        async for batch in self.c.watch(request.vm, request.since_seq, request.follow):
            for data in batch:
                await context.write(data)

    @_rpc
    async def WatchEventBatches(self, request: pb.WatchEventsRequest, context: Any) -> None:
        """Writes each batch the bus gathered as one EventBatch (its events' framed bytes, joined)."""
        watch = self.c.watch(request.vm, request.since_seq, request.follow, as_framed=True, linger=BATCH_LINGER)
        async for batch in watch:
            await context.write(b"".join(batch))

    @_rpc
    async def WriteConsole(self, request: pb.WriteConsoleRequest, context: Any) -> pb.WriteConsoleResponse:
        await self.c.write_console(request.name, request.data)
        return pb.WriteConsoleResponse()

    @metrics.instrument_stream
    async def SnapshotVm(self, request: pb.VmRequest, context: Any) -> AsyncIterator[pb.SnapshotChunk]:
        try:
            async for data in self.c.snapshot(request.name):
                yield pb.SnapshotChunk(data=data)
        except KvmplatError as e:
            await context.abort_with_status(to_status(e))

    @_rpc
    async def RestoreVm(self, request: AsyncIterator[pb.RestoreVmRequest], context: Any) -> pb.Vm:
        first = await anext(aiter(request), None)
        if first is None:
            raise InvalidArgument("RestoreVm: the stream was empty (the first message names the VM)")

        async def chunks() -> AsyncIterator[bytes]:
            yield first.data
            async for r in request:
                yield r.data

        return await self._vm(await self.c.restore(first.name, first.paused, chunks()))

    @metrics.instrument_stream
    async def MigrateVm(self, request: pb.MigrateVmRequest, context: Any) -> AsyncIterator[pb.MigrationProgress]:
        try:
            async for progress in self.c.migrate(request.name, request.target):
                yield progress
        except KvmplatError as e:
            await context.abort_with_status(to_status(e))

    async def ReceiveVm(
        self, request: AsyncIterator[pb.MigrationPacket], context: Any
    ) -> AsyncIterator[pb.MigrationReply]:
        try:
            async for step in self.c.receive(request):
                if step == "accepted":
                    yield pb.MigrationReply(accepted=True)
                elif step == "prepared":
                    yield pb.MigrationReply(prepared=True)
                else:
                    yield pb.MigrationReply(committed=await self._vm(step))
        except KvmplatError as e:
            await context.abort_with_status(to_status(e))

    def _vm_base(self, rec: VmRecord) -> pb.Vm:
        created = Timestamp()
        created.FromNanoseconds(int(rec.created * 1e9))
        return pb.Vm(
            spec=rec.spec,
            state=cast(pb.VmState, proto_value(rec.state)),
            effective_platform=rec.effective,
            runner_pid=rec.pid,
            state_reason=rec.reason,
            created=created,
            last_seq=rec.last_seq,
        )

    async def _vm(self, rec: VmRecord) -> pb.Vm:
        """The VM with the counters its runner gives now."""
        return _with_stats(self._vm_base(rec), await self.c.stats(rec))

    def _vm_answered(self, rec: VmRecord) -> pb.Vm:
        """The VM just created or changed, with the counters its runner sent in that answer."""
        return _with_stats(self._vm_base(rec), rec.stats)


def _with_stats(vm: pb.Vm, s: RunnerStats | None) -> pb.Vm:
    if s is not None:
        vm.stats.exits, vm.stats.console_bytes = s.exits, s.console_bytes
        vm.stats.unhandled_pio, vm.stats.unhandled_mmio = s.unhandled_pio, s.unhandled_mmio
        vm.stats.memory_bytes = s.memory_bytes
        for field, seconds in s.milestones.items():
            getattr(vm.stats, field).FromNanoseconds(int(seconds * 1e9))
        for reason, n in s.by_reason:
            vm.stats.exits_by_reason[exit_reason_name(reason)] = n
    return vm
