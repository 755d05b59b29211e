"""Checks a VmSpec before anything is created: every violation is named by its field path (`spec.vcpus`)."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.guest.builtin import PUBLIC_BUILTINS
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["NAME_RE", "Limits", "validate_name", "validate_spec"]

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")  # \Z: "$" would accept a trailing newline
MAX_CMDLINE = 4096


@dataclass(frozen=True)
class Limits:
    """What one VM may ask for on this host."""

    max_vcpus: int
    max_memory_mib: int
    image_dirs: tuple[str, ...]


def validate_name(name: str, field: str = "name") -> None:
    """A VM name: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    if not NAME_RE.match(name):
        raise InvalidArgument.field(
            field, f"{name!r} is not a VM name (1-63 of A-Z a-z 0-9 . _ -, not starting with . _ -)"
        )


def validate_spec(spec: pb.VmSpec, limits: Limits) -> None:
    """Raises InvalidArgument listing every problem of `spec` at once."""
    v: list[tuple[str, str]] = []
    if not NAME_RE.match(spec.name):
        v.append(("spec.name", f"{spec.name!r} is not a VM name (1-63 of A-Z a-z 0-9 . _ -)"))
    if not 1 <= spec.vcpus <= limits.max_vcpus:
        v.append(("spec.vcpus", f"must be 1 to {limits.max_vcpus} (this host's maximum per VM), not {spec.vcpus}"))
    if not 1 <= spec.memory_mib <= limits.max_memory_mib:
        v.append(("spec.memory_mib", f"must be 1 to {limits.max_memory_mib} MiB (this host), not {spec.memory_mib}"))
    if spec.uuid and not _canonical_uuid(spec.uuid):
        v.append(("spec.uuid", f"{spec.uuid!r} is not a UUID in canonical form (lower-case 8-4-4-4-12 hex)"))
    v += _boot_violations(spec.boot, limits)
    if v:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in v), v)


def _canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _boot_violations(boot: pb.BootSpec, limits: Limits) -> list[tuple[str, str]]:
    source = boot.WhichOneof("source")
    if source is None:
        return [("spec.boot", f"name a built-in payload ({', '.join(PUBLIC_BUILTINS)}) or a kernel")]
    if source == "builtin":
        out = []
        if boot.builtin not in PUBLIC_BUILTINS:
            known = ", ".join(PUBLIC_BUILTINS)
            out.append(("spec.boot.builtin", f"unknown built-in payload {boot.builtin!r} (known: {known})"))
        if boot.initrd or boot.cmdline:
            out.append(("spec.boot", "initrd and cmdline go with a kernel, not a built-in payload"))
        return out
    out = [v for v in (_image_path(boot.kernel, "spec.boot.kernel", limits),) if v]
    if boot.initrd and (bad := _image_path(boot.initrd, "spec.boot.initrd", limits)):
        out.append(bad)
    if len(boot.cmdline) > MAX_CMDLINE or "\0" in boot.cmdline:
        out.append(("spec.boot.cmdline", f"at most {MAX_CMDLINE} bytes, no NUL"))
    return out


def _image_path(path: str, field: str, limits: Limits) -> tuple[str, str] | None:
    """Kernels and initrds come only from the configured image directories (no arbitrary host files)."""
    if not os.path.isabs(path):
        return (field, f"{path!r} must be an absolute path")
    real = os.path.realpath(path)
    dirs = [os.path.realpath(d) for d in limits.image_dirs]
    if not any(os.path.commonpath([real, d]) == d for d in dirs):
        return (field, f"{path} is outside the image directories ({', '.join(limits.image_dirs) or 'none configured'})")
    if not os.path.isfile(real) or not os.access(real, os.R_OK):
        return (field, f"{path} is not a readable file")
    return None
