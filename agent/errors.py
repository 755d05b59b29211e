"""The agent's one error tree. Everything the agent refuses or fails at is one of these; the gRPC edge
(`kvmplat.agent.api.status`) maps each to a status code in one table, and the client holds the inverse.

    KvmplatError
    ├── InvalidArgument      bad input; carries (field, description) violations   → INVALID_ARGUMENT
    ├── NotFound             no such VM                                           → NOT_FOUND
    ├── AlreadyExists        duplicate VM name                                    → ALREADY_EXISTS
    ├── FailedPrecondition   not possible in the current state                    → FAILED_PRECONDITION
    │   ├── IllegalTransition  (lifecycle) names both states
    │   └── PlatformRefused    the host cannot give the declared platform; names field, ask and offer
    ├── ResourceExhausted    beyond the host's memory or vCPUs; says what is left → RESOURCE_EXHAUSTED
    ├── PermissionDenied     the caller's role may not do this                    → PERMISSION_DENIED
    ├── Unavailable          a runner or the host cannot be reached right now     → UNAVAILABLE
    └── HostError            the host failed (an ioctl, a runner start)            → INTERNAL
        └── KvmError           a KVM ioctl failed: ioctl name, fd kind, errno
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "HostError",
    "InvalidArgument",
    "KvmError",
    "KvmplatError",
    "NotFound",
    "PermissionDenied",
    "PlatformRefused",
    "ResourceExhausted",
    "Unavailable",
]


class KvmplatError(Exception):
    """Base of every error the agent reports."""


class InvalidArgument(KvmplatError):
    """Bad input: each violation names the field (proto path, e.g. `spec.vcpus`) and what is wrong."""

    def __init__(self, message: str, violations: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """One violation, with the message naming the field."""
        return cls(f"{field}: {description}", [(field, description)])


class NotFound(KvmplatError):
    """The named VM (or other object) does not exist."""


class AlreadyExists(KvmplatError):
    """A VM of that name exists already."""


class FailedPrecondition(KvmplatError):
    """The request is well-formed but not possible in the current state."""


class PlatformRefused(FailedPrecondition):
    """The host cannot give the declared platform: names the field, what was asked and what the host offers."""

    def __init__(self, field: str, asked: str, reason: str, offered: str = "") -> None:
        text = f"{field} {asked} cannot be honoured: {reason}"
        if offered:
            text += f" (this host offers: {offered})"
        super().__init__(text)
        self.field = field
        self.asked = asked
        self.reason = reason
        self.offered = offered


class ResourceExhausted(KvmplatError):
    """Beyond what the host has left; the message says what is left."""


class PermissionDenied(KvmplatError):
    """The caller may not do this; the message names the role needed."""


class Unavailable(KvmplatError):
    """Something needed cannot be reached right now (a runner, /dev/kvm)."""


class HostError(KvmplatError):
    """The host failed at something that should have worked."""


class KvmError(HostError):
    """A KVM ioctl failed; carries the ioctl's name, the kind of fd (kvm, vm, vcpu) and errno."""

    def __init__(self, ioctl: str, fd_kind: str, err: int, hint: str = "") -> None:
        name = _errno.errorcode.get(err, str(err))
        text = f"{ioctl} on {fd_kind} fd failed: {name} ({os.strerror(err)})"
        if hint:
            text += f"; {hint}"
        super().__init__(text)
        self.ioctl = ioctl
        self.fd_kind = fd_kind
        self.errno = err
