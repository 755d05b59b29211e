"""The agent as a client of another agent (live migration): a channel with this agent's own certificate, and the
target's gRPC errors as this agent's errors, naming the target."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from kvmplat.agent import errors

__all__ = ["PeerError", "PeerTls", "peer_channel"]

OPTIONS = (("grpc.max_send_message_length", 4 << 20), ("grpc.max_receive_message_length", 16 << 20))


@dataclass(frozen=True)
class PeerTls:
    """This agent's --tls-cert/--tls-key (its identity to a target) and --tls-client-ca (to verify the target)."""

    cert: bytes
    key: bytes
    ca: bytes


def _hostport(target: str) -> str:
    if not target.startswith("tcp://"):
        raise errors.InvalidArgument.field("target", f"{target!r}: expected tcp://HOST:PORT or unix:///PATH")
    host, sep, port = target[len("tcp://") :].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidArgument.field("target", f"{target!r}: expected tcp://HOST:PORT")
    return f"{host}:{port}"


@contextlib.asynccontextmanager
async def peer_channel(tls: PeerTls | None, target: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the agent at `target`: mutual TLS with this agent's files over tcp (plain text only when this
    agent itself has no TLS), a unix socket as is."""
    if target.startswith("unix:"):
        channel = grpc.aio.insecure_channel(target, options=OPTIONS)
    elif tls is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert)
        channel = grpc.aio.secure_channel(_hostport(target), creds, options=OPTIONS)
    else:
        channel = grpc.aio.insecure_channel(_hostport(target), options=OPTIONS)
    try:
        yield channel
    finally:
        await channel.close()


_CODES: dict[grpc.StatusCode, type[errors.KvmplatError]] = {
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.INVALID_ARGUMENT: errors.FailedPrecondition,  # the target's complaint about what we sent
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
}


class PeerError:
    """Maps a target's gRPC error into this agent's error tree."""

    @staticmethod
    def of(e: grpc.RpcError, target: str) -> errors.KvmplatError:
        """The agent error for a failed call to the agent at `target`."""
        code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
        details = e.details() if hasattr(e, "details") else str(e)
        cls = _CODES.get(code, errors.Unavailable)
        if cls is errors.Unavailable:
            return errors.Unavailable(f"migration to {target} failed: the target is unreachable or failed ({details})")
        return cls(f"the target {target} refused the VM: {details}")
