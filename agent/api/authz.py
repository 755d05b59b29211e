"""Who may call what over mutual TLS: the `--authz` file (certificate common name → role) and the grpc.aio server
interceptor that enforces it.

Roles are ordered: `reader` may call GetCapabilities, CheckPlatform, GetVm, ListVms, WatchEvents, WatchEventBatches,
gRPC health and reflection; `operator` may call everything. Any method not listed as a reader's (including ones added
later) needs `operator`. A certificate whose common name is not in the file is refused; a refused call is
PERMISSION_DENIED and names the role it needs. Without `--authz`, every client whose certificate the TLS handshake
verified is an operator.

The check is an interceptor rather than a check in the servicer's `_rpc` decorator because it then covers every
service on the server (health, reflection and any added later) and fails closed for methods nobody classified. A
grpc.aio interceptor only sees the method name, not the peer, so it wraps the method's handler: the wrapper reads
`context.auth_context()` (the verified peer's `x509_common_name`) before the handler runs.

The file is a flat YAML mapping, one `common-name: role` per line (keys and values may be quoted; `#` comments).
It is parsed here, not by a YAML library: nothing else (anchors, tags, nesting) is accepted, so nothing in the file
can do more than name roles.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Any

import grpc
from grpc import aio
from kvmplat.agent.api.interceptors import HandlerWrapper, rewrap

__all__ = ["READER_METHODS", "AuthzInterceptor", "Role", "load_policy", "parse_policy", "required_role"]

log = logging.getLogger("kvmplat.agent.api.authz")


class Role(enum.IntEnum):
    """A caller's role; a higher role may do everything a lower one may."""

    reader = 1
    operator = 2


READER_METHODS = frozenset(
    f"/kvmplat.v1.Agent/{m}"
    for m in ("GetCapabilities", "CheckPlatform", "GetVm", "ListVms", "WatchEvents", "WatchEventBatches")
)
READER_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})


def required_role(method: str) -> Role:
    """The role a full method name (`/package.Service/Method`) needs; unclassified methods need operator."""
    service = method.lstrip("/").split("/", 1)[0]
    return Role.reader if method in READER_METHODS or service in READER_SERVICES else Role.operator


def _scalar(text: str, lineno: int) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if not text or text[0] in "&*!|>[]{}'\"%@`" or " #" in text:
        raise ValueError(f"line {lineno}: {text!r} is not a plain name (only `common-name: role` lines)")
    return text


def parse_policy(text: str) -> dict[str, Role]:
    """The CN → role mapping of an authz file's text; ValueError naming the line for anything else."""
    policy: dict[str, Role] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line == "---":
            continue
        if raw[0].isspace() or ":" not in line:
            raise ValueError(f"line {lineno}: expected `common-name: role`, got {raw!r}")
        key, value = _split_quoted(line, lineno) if line[0] in "'\"" else line.split(":", 1)
        cn, role = _scalar(key, lineno), _scalar(value.split(" #", 1)[0], lineno)
        if role not in Role.__members__:
            raise ValueError(f"line {lineno}: role {role!r} of {cn!r} is not one of {', '.join(Role.__members__)}")
        if cn in policy:
            raise ValueError(f"line {lineno}: {cn!r} is named twice")
        policy[cn] = Role[role]
    return policy


def _split_quoted(line: str, lineno: int) -> tuple[str, str]:
    end = line.find(line[0], 1)
    if end < 0 or line[end + 1 : end + 2] != ":":
        raise ValueError(f"line {lineno}: unterminated quoted name in {line!r}")
    return line[: end + 1], line[end + 2 :]


def load_policy(path: str) -> dict[str, Role]:
    """Reads an authz file; ValueError (the agent exits 2) when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--authz {path}: {e}") from None
    try:
        return parse_policy(text)
    except ValueError as e:
        raise ValueError(f"--authz {path}: {e}") from None


def _peer_cn(context: aio.ServicerContext[Any, Any]) -> str | None:
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode("utf-8", "replace") if names else None


def refusal(policy: Mapping[str, Role], method: str, cn: str | None) -> str | None:
    """Why a caller with certificate CN `cn` may not call `method` (None when it may)."""
    need = required_role(method)
    if cn is None:
        return f"{method} needs role {need.name}: the caller presented no certificate common name"
    role = policy.get(cn)
    if role is None:
        return f"{method} needs role {need.name}: certificate {cn!r} is not named in the authz file"
    if role < need:
        return f"{method} needs role {need.name}: certificate {cn!r} has role {role.name}"
    return None


class AuthzInterceptor(HandlerWrapper):
    """Refuses, with PERMISSION_DENIED, calls whose certificate's role is below what the method needs."""

    def __init__(self, policy: Mapping[str, Role]) -> None:
        super().__init__()
        self.policy = dict(policy)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The method's handler with every behaviour wrapped in the role check."""

        async def check(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            why = refusal(self.policy, method, _peer_cn(context))
            if why is not None:
                log.warning("refused: %s", why)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
            return request

        return rewrap(handler, lambda _kind: check)
