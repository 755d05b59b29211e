"""Where and how the agent listens: a unix socket guarded by file permissions (0600, or 0660 with `--socket-group`;
never world-writable), or TCP with mutual TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`: clients must present a
certificate signed by that CA) and optional roles (`--authz`, see authz.py). Plain TCP only with `--insecure`.

A client without a certificate, or with one from another CA, fails the TLS handshake: it sees UNAVAILABLE, not
UNAUTHENTICATED, and the agent logs the handshake failure (gRPC has no status for a peer it never admitted).
"""

from __future__ import annotations

import argparse
import grp
import os
from dataclasses import dataclass, field
from typing import Any

import grpc
from kvmplat.agent.api.authz import AuthzInterceptor, Role, load_policy

__all__ = ["Listener", "add_flags", "listener"]

TLS_FLAGS = ("tls_cert", "tls_key", "tls_client_ca")
MAX_PEM = 1 << 20


def add_flags(p: argparse.ArgumentParser) -> None:
    """The transport flags: TLS files, roles and the unix socket's group."""
    p.add_argument("--tls-cert", help="PEM certificate (chain) of the agent, for tcp://")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA that signs client certificates (clients must present one)")
    p.add_argument("--authz", help="YAML file of `certificate-common-name: reader|operator` (default: all operator)")
    p.add_argument("--socket-group", help="unix socket group: the socket becomes 0660 with this group (default 0600)")


@dataclass(frozen=True)
class Listener:
    """The bind target, its credentials (None for unix or --insecure) and what guards it."""

    target: str
    socket_path: str | None = None
    credentials: Any = None
    policy: dict[str, Role] | None = None
    socket_gid: int | None = None
    insecure: bool = False
    interceptors: list[Any] = field(default_factory=list)

    def add_port(self, server: grpc.aio.Server) -> None:
        """Binds the port; a unix socket is created 0600 (umask) so no one else can connect before chmod."""
        if self.socket_path is None:
            try:
                if self.credentials is None:
                    server.add_insecure_port(self.target)
                else:
                    server.add_secure_port(self.target, self.credentials)
            except RuntimeError:  # grpc's "Failed to bind" (its core logged the errno a line above)
                raise ValueError(
                    f"--listen tcp://{self.target}: cannot listen there (the port is in use, or the address is not "
                    "this host's)"
                ) from None
            return
        os.makedirs(os.path.dirname(self.socket_path) or ".", mode=0o755, exist_ok=True)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        old_umask = os.umask(0o177)
        try:
            server.add_insecure_port(self.target)
        finally:
            os.umask(old_umask)

    def secure_socket(self) -> None:
        """Sets the unix socket's final mode: 0600, or 0660 with --socket-group's group."""
        if self.socket_path is None:
            return
        if self.socket_gid is None:
            os.chmod(self.socket_path, 0o600)
        else:
            os.chown(self.socket_path, -1, self.socket_gid)
            os.chmod(self.socket_path, 0o660)


def _read_pem(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM)
    except OSError as e:
        raise ValueError(f"--{flag.replace('_', '-')} {path}: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"--{flag.replace('_', '-')} {path}: not a PEM file")
    return data


def _group(name: str) -> int:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"--socket-group {name}: no such group") from None


def _unix(args: argparse.Namespace, path: str) -> Listener:
    given = [f"--{f.replace('_', '-')}" for f in (*TLS_FLAGS, "authz") if getattr(args, f, None)]
    if given:
        raise ValueError(f"{', '.join(given)} apply to tcp:// only; a unix socket is guarded by file permissions")
    gid = _group(args.socket_group) if getattr(args, "socket_group", None) else None
    return Listener(target=f"unix:{path}", socket_path=path, socket_gid=gid)


def _tcp(args: argparse.Namespace, hostport: str) -> Listener:
    if getattr(args, "socket_group", None):
        raise ValueError("--socket-group applies to unix:// sockets only")
    given = [f for f in TLS_FLAGS if getattr(args, f, None)]
    if not given and not args.insecure:
        raise ValueError(
            "--listen tcp:// needs TLS (--tls-cert, --tls-key, --tls-client-ca), or --insecure for plain text"
        )
    if not given:
        if getattr(args, "authz", None):
            raise ValueError("--authz needs TLS: roles come from client certificates")
        return Listener(target=hostport, insecure=True)
    if args.insecure:
        raise ValueError("--insecure and --tls-* contradict each other: choose one")
    missing = [f"--{f.replace('_', '-')}" for f in TLS_FLAGS if f not in given]
    if missing:
        raise ValueError(f"--listen tcp:// with TLS also needs {', '.join(missing)}")
    pems = {f: _read_pem(f, getattr(args, f)) for f in TLS_FLAGS}
    creds = grpc.ssl_server_credentials(
        [(pems["tls_key"], pems["tls_cert"])], root_certificates=pems["tls_client_ca"], require_client_auth=True
    )
    policy = load_policy(args.authz) if getattr(args, "authz", None) else None
    interceptors = [AuthzInterceptor(policy)] if policy is not None else []
    return Listener(target=hostport, credentials=creds, policy=policy, interceptors=interceptors)


def listener(args: argparse.Namespace) -> Listener:
    """The listener for the parsed flags; ValueError with the reason (the agent exits 2) when they do not fit."""
    address: str = args.listen
    if address.startswith("unix://"):
        if not address.startswith("unix:///"):
            raise ValueError(f"unix socket path must be absolute: {address}")
        return _unix(args, address[len("unix://") :])
    if address.startswith("unix:"):
        return _unix(args, address[len("unix:") :])
    if address.startswith("tcp://"):
        return _tcp(args, address[len("tcp://") :])
    raise ValueError(f"--listen takes unix:///PATH or tcp://HOST:PORT, not {address!r}")
