"""`Client`: a typed, synchronous wrapper over the Agent stubs. Every unary call has a timeout; every failure is one
of `kvmplat.client.errors` (a `KvmplatError`). Imports are kept to grpc and the generated stubs: a short-lived
caller (a hook, a script) pays for nothing else.

    from kvmplat.client.agent import Client
    from kvmplat.client.specfile import parse_spec
    from kvmplat.v1 import agent_pb2 as pb

    spec = pb.VmSpec(name="web1", vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"),
                     platform=pb.PlatformSpec(pv=[pb.KVM], compat="x86-64-v2", compat_policy=pb.BEST_EFFORT))
    # or from the JSON a spec file holds: parse_spec('{"name": "web1", ..., "platform": {"pv": "kvm"}}')
    with Client() as c:                          # address: KVMPLAT_AGENT, else unix:///run/kvmplat/agent.sock
        vm = c.create_vm(spec, start=True)       # a pb.Vm; its name is vm.spec.name
        print(pb.VmState.Name(vm.state))         # enums are ints: pb.VmState.Name(2) == "RUNNING", pb.RUNNING == 2
        for ev in c.watch_events("web1", follow=True):
            kind = ev.WhichOneof("kind")         # "state", "console", "exit" or "error"
            if kind == "state":
                print(ev.seq, pb.VmState.Name(ev.state.to), ev.state.reason)

README.md ("Python") has the whole example, and `kvmplat.client.errors` the error tree.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import grpc
from kvmplat.client.errors import AddressError, KvmplatError, from_rpc_error
from kvmplat.client.vmstates import ACTIVE
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT",
    "ENV_AGENT",
    "AddressError",
    "Client",
    "EventStream",
    "TlsFiles",
    "default_address",
    "grpc_target",
]

ENV_AGENT = "KVMPLAT_AGENT"
DEFAULT_ADDRESS = "unix:///run/kvmplat/agent.sock"
DEFAULT_TIMEOUT = 10.0
MOVE_TIMEOUT = 3600.0  # snapshots, restores and migrations move whole guest memories
RESTORE_PIECE = 1 << 20  # bytes of snapshot per RestoreVm message (the agent takes messages up to 4 MiB)
# gRPC message size limits, the agent's mirrored: requests up to 4 MiB, replies up to 16 MiB.
CHANNEL_OPTIONS = (("grpc.max_send_message_length", 4 << 20), ("grpc.max_receive_message_length", 16 << 20))
# How long a failed call may spend asking whether the channel is connected, to tell "agent said UNAVAILABLE" from
# "no agent there"; only failed calls pay it.
_READY_PROBE_S = 0.2

T = TypeVar("T")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for mutual TLS over tcp: the CA that signed the agent, and this client's certificate and key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def credentials(self) -> Any:
        """grpc channel credentials built from the files (read now, so a missing file fails early)."""
        if (self.cert is None) != (self.key is None):
            raise AddressError("--tls-cert and --tls-key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca), private_key=_read(self.key), certificate_chain=_read(self.cert)
        )


def _read(path: str | None) -> bytes | None:
    """The bytes of a PEM file, or None when no path is given."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AddressError(f"cannot read TLS file {path}: {e.strerror}") from None


def default_address(env: dict[str, str] | None = None) -> str:
    """The agent address from KVMPLAT_AGENT, else the documented default socket."""
    value = (os.environ if env is None else env).get(ENV_AGENT, "")
    return value or DEFAULT_ADDRESS


def grpc_target(address: str) -> str:
    """The grpc channel target for an agent address (`unix:///path`, `unix:path`, `tcp://host:port`)."""
    if address.startswith("unix://"):
        if not address.startswith("unix:///"):
            raise AddressError(f"bad agent address {address!r}: a unix socket path must be absolute (unix:///path)")
        return address
    if address.startswith("unix:"):
        if len(address) == len("unix:"):
            raise AddressError(f"bad agent address {address!r}: no socket path")
        return address
    if address.startswith("tcp://"):
        hostport = address[len("tcp://") :]
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise AddressError(f"bad agent address {address!r}: expected tcp://HOST:PORT")
        return hostport
    raise AddressError(f"bad agent address {address!r}: expected unix:///PATH, unix:PATH or tcp://HOST:PORT")


class EventStream:
    """The events of a watch, as an iterator; `cancel()` (from any thread) ends it quietly. It asks for
    WatchEventBatches (several events to a message: far less work for both sides under load) and falls back to
    WatchEvents for an agent that does not have it."""

    def __init__(self, stub: Any, request: pb.WatchEventsRequest, timeout: float | None, client: Client) -> None:
        self._stub, self._request, self._timeout = stub, request, timeout
        self._call = stub.WatchEventBatches(request, timeout=timeout)
        self._client = client
        self._cancelled = False

    def __iter__(self) -> Iterator[pb.Event]:
        try:
            try:
                for batch in self._call:
                    yield from batch.events
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED or self._cancelled:
                    raise
                self._call = self._stub.WatchEvents(self._request, timeout=self._timeout)  # an older agent
                yield from self._call
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._client.error(e) from None

    def cancel(self) -> None:
        """Ends the stream; an iteration in progress stops without an error."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client:
    """A connection to one kvmplat agent; also a context manager that closes the channel.

    `address` defaults to the environment's KVMPLAT_AGENT, else unix:///run/kvmplat/agent.sock (forms:
    unix:///PATH, unix:PATH, tcp://HOST:PORT; TLS files in `tls` for tcp). `timeout` bounds each unary call.

    Messages are the generated protobuf classes of `kvmplat.v1.agent_pb2` (imported as `pb`):
      - a VmSpec is built with keyword arguments, `pb.VmSpec(name=..., vcpus=..., memory_mib=...,
        boot=pb.BootSpec(builtin="loop") or pb.BootSpec(kernel=PATH, initrd=..., cmdline=...),
        platform=pb.PlatformSpec(abi=pb.BARE_METAL, pv=[pb.KVM], compat="x86-64-v2", compat_policy=pb.STRICT))`,
        or read from protobuf JSON with `kvmplat.client.specfile.parse_spec(text)` / `load_spec(path)`;
      - a VM's name is `vm.spec.name`; its state `vm.state` is an int of the VmState enum: compare it with
        `pb.RUNNING`, name it with `pb.VmState.Name(vm.state)` (likewise `pb.Abi.Name`, `pb.Pv.Name`);
      - an Event carries one of `state`, `console`, `exit`, `error`: `ev.WhichOneof("kind")` says which;
        `ev.state.to` is the new state (`from` is a Python keyword: `getattr(ev.state, "from")`).
    Every failure raises a `kvmplat.client.errors.KvmplatError` subclass (Unreachable when no agent answers).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tls: TlsFiles | None = None,
        channel: Any = None,
    ) -> None:
        self.address = address or default_address()
        self.timeout = timeout
        if channel is None:
            target = grpc_target(self.address)
            if tls is not None and target.startswith("unix:"):
                raise AddressError("TLS is for tcp:// addresses; a unix socket is guarded by file permissions")
            channel = (
                grpc.secure_channel(target, tls.credentials(), options=CHANNEL_OPTIONS)
                if tls
                else grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
            )
        self._channel = channel
        self._stub = pb_grpc.AgentStub(channel)  # type: ignore[no-untyped-call]  # generated, no .pyi

    def close(self) -> None:
        """Closes the channel (ending any event stream)."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def error(self, err: Any) -> KvmplatError:
        """The client error for a grpc.RpcError from this client's channel."""
        return from_rpc_error(err, self.address, self._channel_ready)

    def _channel_ready(self) -> bool:
        """Whether the channel is connected (or connects within a moment)."""
        return self.wait_ready(_READY_PROBE_S)

    def _call(self, method: Any, request: Any, reply: type[T], timeout: float | None = None) -> T:
        """Runs one unary call with a deadline, turning grpc errors into client errors; `reply` types the answer."""
        try:
            return cast(T, method(request, timeout=self.timeout if timeout is None else timeout))
        except grpc.RpcError as e:
            raise self.error(e) from None

    def wait_ready(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds for the channel to connect; True when it did."""
        future = grpc.channel_ready_future(self._channel)
        try:
            future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            future.cancel()
            return False
        return True

    def capabilities(self, refresh: bool = False) -> pb.Capabilities:
        """What the host can run (GetCapabilities); `refresh` re-runs the probe guests."""
        timeout = None if not refresh else max(self.timeout, 60.0)
        return self._call(
            self._stub.GetCapabilities, pb.GetCapabilitiesRequest(refresh=refresh), pb.Capabilities, timeout
        )

    def check_platform(self, spec: pb.VmSpec, platform_only: bool = False) -> pb.EffectivePlatform:
        """A dry run of `create_vm(spec)`: the effective platform, or the refusal create_vm would give, as an error;
        `platform_only` resolves spec.platform alone (CheckPlatform)."""
        request = pb.CheckPlatformRequest(spec=spec, platform_only=platform_only)
        reply = self._call(self._stub.CheckPlatform, request, pb.CheckPlatformResponse)
        return reply.effective_platform

    def create_vm(self, spec: pb.VmSpec, start: bool = False) -> pb.Vm:
        """Creates a VM from `spec`, starting it at once when `start` (CreateVm)."""
        return self._call(self._stub.CreateVm, pb.CreateVmRequest(spec=spec, start=start), pb.Vm)

    def start_vm(self, name: str) -> pb.Vm:
        """Starts a CREATED VM, or boots a STOPPED one again from its spec (StartVm)."""
        return self._call(self._stub.StartVm, pb.VmRequest(name=name), pb.Vm)

    def pause_vm(self, name: str) -> pb.Vm:
        """Pauses a RUNNING VM (PauseVm)."""
        return self._call(self._stub.PauseVm, pb.VmRequest(name=name), pb.Vm)

    def resume_vm(self, name: str) -> pb.Vm:
        """Resumes a PAUSED VM (ResumeVm)."""
        return self._call(self._stub.ResumeVm, pb.VmRequest(name=name), pb.Vm)

    def stop_vm(self, name: str) -> pb.Vm:
        """Stops a VM: its guest ends; `start_vm` boots it again (StopVm)."""
        return self._call(self._stub.StopVm, pb.VmRequest(name=name), pb.Vm)

    def destroy_vm(self, name: str, force: bool = False) -> None:
        """Frees a VM and everything it held; `force` stops a RUNNING or PAUSED VM first (DestroyVm)."""
        self._call(self._stub.DestroyVm, pb.VmRequest(name=name, force=force), pb.DestroyVmResponse)

    def get_vm(self, name: str) -> pb.Vm:
        """One VM by name (GetVm)."""
        return self._call(self._stub.GetVm, pb.VmRequest(name=name), pb.Vm)

    def list_vms(self) -> list[pb.Vm]:
        """Every VM on the agent (ListVms)."""
        reply = self._call(self._stub.ListVms, pb.ListVmsRequest(), pb.ListVmsResponse)
        return list(reply.vms)

    def destroy_all(self) -> None:
        """Stops (when needed) and destroys every VM on the agent, best effort: a VM that refuses is left as it is."""
        with contextlib.suppress(KvmplatError):
            for vm in self.list_vms():
                if vm.state in ACTIVE:
                    with contextlib.suppress(KvmplatError):
                        self.stop_vm(vm.spec.name)
                with contextlib.suppress(KvmplatError):
                    self.destroy_vm(vm.spec.name)

    def write_console(self, name: str, data: bytes) -> None:
        """Types `data` at the VM's serial console (WriteConsole)."""
        self._call(self._stub.WriteConsole, pb.WriteConsoleRequest(name=name, data=data), pb.WriteConsoleResponse)

    def snapshot_vm(self, name: str, timeout: float = MOVE_TIMEOUT) -> Iterator[bytes]:
        """The snapshot of a PAUSED VM, as the file's bytes in pieces (SnapshotVm)."""
        try:
            for chunk in self._stub.SnapshotVm(pb.VmRequest(name=name), timeout=timeout):
                yield chunk.data
        except grpc.RpcError as e:
            raise self.error(e) from None

    def snapshot_to_file(self, name: str, path: str) -> int:
        """Writes the snapshot of a PAUSED VM to `path` (whole or not at all); returns its size in bytes."""
        tmp = f"{path}.partial"
        size = 0
        try:
            with open(tmp, "wb") as f:
                for data in self.snapshot_vm(name):
                    f.write(data)
                    size += len(data)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return size

    def restore_vm(self, name: str, chunks: Iterable[bytes], paused: bool = False) -> pb.Vm:
        """Creates VM `name` from a snapshot's bytes (RestoreVm); RUNNING, or PAUSED with `paused`."""

        def requests() -> Iterator[pb.RestoreVmRequest]:
            yield pb.RestoreVmRequest(name=name, paused=paused)
            for data in chunks:
                for i in range(0, len(data), RESTORE_PIECE):
                    yield pb.RestoreVmRequest(data=data[i : i + RESTORE_PIECE])

        return self._call(self._stub.RestoreVm, requests(), pb.Vm, MOVE_TIMEOUT)

    def restore_from_file(self, name: str, path: str, paused: bool = False) -> pb.Vm:
        """Creates VM `name` from the snapshot file at `path`."""
        with open(path, "rb") as f:
            return self.restore_vm(name, iter(lambda: f.read(RESTORE_PIECE), b""), paused)

    def migrate_vm(self, name: str, target: str, timeout: float = MOVE_TIMEOUT) -> Iterator[pb.MigrationProgress]:
        """Moves a RUNNING VM to the agent at `target` (MigrateVm); yields progress, the last one with phase "done"."""
        try:
            yield from self._stub.MigrateVm(pb.MigrateVmRequest(name=name, target=target), timeout=timeout)
        except grpc.RpcError as e:
            raise self.error(e) from None

    def watch_events(self, vm: str = "", since_seq: int = 0, follow: bool = True) -> EventStream:
        """Events of `vm` (every VM when empty) with seq > `since_seq`; live too when `follow` (WatchEventBatches).
        Without `follow` the whole call has the client's timeout; a followed stream has none, and a followed stream
        of one VM ends (the iteration stops, no error) when that VM is destroyed."""
        request = pb.WatchEventsRequest(vm=vm, since_seq=since_seq, follow=follow)
        return EventStream(self._stub, request, None if follow else self.timeout, self)
