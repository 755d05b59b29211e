"""Kubernetes node labels from an agent's live capabilities, in node-feature-discovery's local features file format.

The file NFD's `local` source reads (`/etc/kubernetes/node-feature-discovery/features.d/<name>`) holds one
`name=value` line per feature and `#` comments; a name with a domain prefix (`kvmplat.io/...`) becomes that node
label as is, once the prefix is allowed in nfd-master's `-extra-label-ns`.

Labels (all under `kvmplat.io/`, values `true` unless said):
    arch=<x86_64|ppc64le>        abi.<abi>, pv.<pv>          accel=<default>, accel.<name>
    arch.<guest arch>            a guest arch the host's KVM runs (arch.x86-64, arch.ppc64le, arch.ppc, ...)
    max-level=<level>            the agent's ceiling (kvmplat-agent --max-level): no level above it is labelled
    <level>.strict               CheckPlatform admits the level under STRICT: the guest sees exactly that level
    <level>.best-effort          CheckPlatform admits it under BEST_EFFORT: every feature it needs is offered, and
                                 features above it that cannot be hidden stay visible (named in the notes)
Level and accel names outside the label alphabet are rewritten: power7+ is labelled power7-plus.

A level label says which policy it is good for, because that is what the agent checks: a bare `<level>=true`
(published before) was read as "STRICT works here" by schedulers, and the agent refused those guests. Each label is
copied from the capability flag the agent computes with the same code that admits or refuses a request, and an
end-to-end test asks CheckPlatform for every label published.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from kvmplat.v1 import agent_pb2 as pb

__all__ = ["PREFIX", "format_nfd", "labels_from_caps", "write_nfd_file"]

PREFIX = "kvmplat.io/"
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def _slug(enum_name: str) -> str:
    """BARE_METAL -> bare-metal (a label-name-safe enum name)."""
    return enum_name.lower().replace("_", "-")


def _label_safe(name: str) -> str:
    """A level or accel name as a label name part: power7+ -> power7-plus."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", name.replace("+", "-plus"))


def _levels(caps: pb.Capabilities) -> Iterable[tuple[str, str]]:
    """`<level>.strict` and `<level>.best-effort` where the agent admits the level under that policy."""
    for level in caps.levels:
        if level.strict and not level.missing:
            yield f"{_label_safe(level.name)}.strict", "true"
        if level.best_effort and not level.missing:
            yield f"{_label_safe(level.name)}.best-effort", "true"


def labels_from_caps(caps: pb.Capabilities) -> dict[str, str]:
    """The node labels (prefixed, sorted by name) that the capabilities justify."""
    pairs: list[tuple[str, str]] = []
    if caps.arch:
        pairs.append(("arch", caps.arch))
    pairs += [(f"arch.{_slug(pb.Arch.Name(a))}", "true") for a in caps.arches if a]
    if caps.max_level:
        pairs.append(("max-level", _label_safe(caps.max_level)))
    pairs += [(f"abi.{_slug(pb.Abi.Name(a))}", "true") for a in caps.abis if a]
    pairs += [(f"pv.{_slug(pb.Pv.Name(p))}", "true") for p in caps.pv if p]
    pairs += [(f"accel.{_label_safe(a)}", "true") for a in caps.accels]
    if caps.accel_default:
        pairs.append(("accel", _label_safe(caps.accel_default)))
    pairs += list(_levels(caps))
    for name, value in pairs:
        if not _NAME.match(name) or (value and not _NAME.match(value)):
            raise ValueError(f"capability gives an invalid label {PREFIX}{name}={value}")
    return {PREFIX + name: value for name, value in sorted(pairs)}


def format_nfd(labels: dict[str, str], source: str = "") -> str:
    """The labels as an NFD local features file: a comment header, then `name=value` lines."""
    head = "# kvmplat node features (written by `kvmplat labels`; do not edit)\n"
    if source:
        head += f"# source: {source}\n"
    return head + "".join(f"{k}={v}\n" for k, v in labels.items())


def write_nfd_file(path: str | Path, text: str) -> None:
    """Writes `text` to `path` atomically (temp file in the same directory, fsync, rename), mode 0644."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
