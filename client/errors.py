"""The client's one error tree: the inverse of the agent's (`kvmplat.agent.errors`), decoded from gRPC statuses.

    KvmplatError             base; carries the gRPC status `code` name and the agent's message
    ├── InvalidArgument      INVALID_ARGUMENT, OUT_OF_RANGE; `violations` from google.rpc.BadRequest
    ├── NotFound             NOT_FOUND
    ├── AlreadyExists        ALREADY_EXISTS
    ├── FailedPrecondition   FAILED_PRECONDITION, ABORTED (illegal transition, platform refused)
    ├── ResourceExhausted    RESOURCE_EXHAUSTED
    ├── PermissionDenied     PERMISSION_DENIED, UNAUTHENTICATED
    ├── Unavailable          UNAVAILABLE sent by the agent (a runner cannot be reached)
    ├── AgentFailed          INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED (the agent's HostError)
    ├── Unreachable          the agent could not be reached or did not answer (client side)
    │   └── DeadlineExceeded   no answer within the call's timeout
    └── AddressError         a bad agent address or TLS file, found before any call (client side; a ValueError too)

Everything except `Unreachable` and `AddressError` is the agent's answer (the CLI exits 1); those two are the
caller's or the connection's problem (the CLI exits 2). `from_rpc_error` is the one place that turns a
`grpc.RpcError` into one of these, through `ERRORS_BY_CODE`. grpc_status (and googleapis-common-protos) is imported
only when an error carries rich details, so a short-lived caller such as the libvirt hook pays nothing for it on the
happy path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import grpc

__all__ = [
    "ERRORS_BY_CODE",
    "AddressError",
    "AgentFailed",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "KvmplatError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unavailable",
    "Unreachable",
    "from_rpc_error",
]

# A status carrying rich details was certainly sent by the agent.
_DETAILS_KEY = "grpc-status-details-bin"
# grpc core's own wording for transport failures; used only when the caller cannot tell us whether the channel is up
# (grpc 1.85 gives a locally made UNAVAILABLE the same shape as one the agent sent: no metadata, no peer marker).
_TRANSPORT_WORDS = (
    "failed to connect",
    "socket closed",
    "connection reset",
    "connection refused",
    "broken pipe",
    "dns resolution",
    "goaway",
    "transport",
    "keepalive",
    "endpoint",
)


class KvmplatError(Exception):
    """Base of every error the client raises; `code` is the gRPC status name, `message` the agent's reason."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def one_line(self) -> str:
        """The error as a single line (for the CLI's stderr)."""
        return " ".join(str(self).split())


class InvalidArgument(KvmplatError):
    """Bad input; `violations` are (field, description) pairs from google.rpc.BadRequest."""

    def __init__(self, message: str, code: str = "", violations: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message, code)
        self.violations = violations

    def __str__(self) -> str:
        extra = [f"{f}: {d}" for f, d in self.violations if f"{f}: {d}" not in self.message]
        return "; ".join([self.message, *extra]) if extra else self.message


class NotFound(KvmplatError):
    """The named VM does not exist."""


class AlreadyExists(KvmplatError):
    """A VM of that name exists already."""


class FailedPrecondition(KvmplatError):
    """Not possible in the VM's current state, or the host cannot give the declared platform."""


class ResourceExhausted(KvmplatError):
    """Beyond what the host has left."""


class PermissionDenied(KvmplatError):
    """The caller may not do this (or could not be authenticated)."""


class Unavailable(KvmplatError):
    """The agent answered that something it needs cannot be reached right now."""


class AgentFailed(KvmplatError):
    """The agent failed at something that should have worked (or does not implement the call)."""


class Unreachable(KvmplatError):
    """The agent could not be reached at `address`, or the connection broke."""

    def __init__(self, message: str, code: str = "", address: str = "") -> None:
        super().__init__(message, code)
        self.address = address


class DeadlineExceeded(Unreachable):
    """The agent did not answer within the call's timeout."""


class AddressError(KvmplatError, ValueError):
    """An agent address in none of the accepted forms (unix:///path, unix:path, tcp://host:port), or TLS files that
    cannot be used; raised by the client before any call (a ValueError too, as it always was)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "")


_C = grpc.StatusCode
ERRORS_BY_CODE: Mapping[Any, type[KvmplatError]] = MappingProxyType(
    {
        _C.INVALID_ARGUMENT: InvalidArgument,
        _C.OUT_OF_RANGE: InvalidArgument,
        _C.NOT_FOUND: NotFound,
        _C.ALREADY_EXISTS: AlreadyExists,
        _C.FAILED_PRECONDITION: FailedPrecondition,
        _C.ABORTED: FailedPrecondition,
        _C.RESOURCE_EXHAUSTED: ResourceExhausted,
        _C.PERMISSION_DENIED: PermissionDenied,
        _C.UNAUTHENTICATED: PermissionDenied,
        _C.UNAVAILABLE: Unavailable,
        _C.INTERNAL: AgentFailed,
        _C.UNKNOWN: AgentFailed,
        _C.DATA_LOSS: AgentFailed,
        _C.UNIMPLEMENTED: AgentFailed,
        _C.DEADLINE_EXCEEDED: DeadlineExceeded,
        _C.CANCELLED: Unreachable,
    }
)
del _C


def from_rpc_error(err: Any, address: str = "", channel_ready: Callable[[], bool] | None = None) -> KvmplatError:
    """The client error for a failed call (`err`: a grpc.RpcError that is a grpc.Call; `channel_ready`: is the
    channel connected now, which tells an UNAVAILABLE the agent sent from a connection failure)."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    message = (err.details() if callable(getattr(err, "details", None)) else None) or str(code.name)
    if code == grpc.StatusCode.UNAVAILABLE and not _sent_by_agent(err, message, channel_ready):
        return _unreachable(message, code.name, address)
    cls = ERRORS_BY_CODE.get(code, AgentFailed)
    if issubclass(cls, Unreachable):
        return _unreachable(message, code.name, address, cls)
    if cls is InvalidArgument:
        return InvalidArgument(message, code.name, _violations(err))
    return cls(message, code.name)


def _sent_by_agent(err: Any, message: str, channel_ready: Callable[[], bool] | None) -> bool:
    """Whether an UNAVAILABLE came from the agent rather than from the client's own transport."""
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
    if any(key == _DETAILS_KEY for key, _ in trailing or ()):
        return True
    if channel_ready is not None:
        return channel_ready()
    lowered = message.lower()
    return not any(word in lowered for word in _TRANSPORT_WORDS)


def _unreachable(message: str, code: str, address: str, cls: type[Unreachable] = Unreachable) -> Unreachable:
    """An Unreachable naming the address, with a hint an operator can act on."""
    where = f" at {address}" if address else ""
    if cls is DeadlineExceeded:
        text = f"the kvmplat agent{where} did not answer in time ({message})"
    else:
        text = (
            f"cannot reach the kvmplat agent{where}: {message} (is kvmplat-agent running? see --agent / KVMPLAT_AGENT)"
        )
    return cls(text, code, address)


def _violations(err: Any) -> tuple[tuple[str, str], ...]:
    """The google.rpc.BadRequest field violations carried by `err`, if any."""
    try:
        from google.rpc import error_details_pb2  # only failed calls pay for googleapis protos
        from grpc_status import rpc_status

        status = rpc_status.from_call(err)
    except (ImportError, ValueError, AttributeError, TypeError):
        return ()
    if status is None:
        return ()
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend((v.field, v.description) for v in bad.field_violations)
    return tuple(found)
