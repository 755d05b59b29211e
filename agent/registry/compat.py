"""Whether this host can take a VM from elsewhere (a snapshot or a live migration) and give it the same platform.

The guest keeps the exact CPUID table it was given; this host must (1) be the same architecture, (2) resolve the VM's
declared platform to the same effective platform (abi, pv, level, policy, bits, and the same features visible above
the level), and (3) support every named feature that table shows. Otherwise the refusal names the culprit, before
anything is built or any memory moves.
"""

from __future__ import annotations

from typing import Any

from kvmplat.agent.errors import FailedPrecondition, KvmplatError
from kvmplat.agent.platform.levels import X86_FEATURES
from kvmplat.agent.registry.hostview import Platforms
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["check_incoming", "visible_features"]

_REG = {"eax": 3, "ebx": 4, "ecx": 5, "edx": 6}
_SAME = ("abi", "compat", "compat_policy", "bits")


def visible_features(rows: list[Any]) -> set[str]:
    """The named x86 features a CPUID table shows."""
    by_leaf = {(int(r[0]), int(r[1])): r for r in rows}
    out = set()
    for f in X86_FEATURES:
        row = by_leaf.get((f.leaf, f.subleaf)) or (by_leaf.get((f.leaf, 0)) if f.subleaf == 0 else None)
        if row is not None and int(row[_REG[f.reg]]) >> f.bit & 1:
            out.add(f.name)
    return out


def _field(msg: pb.EffectivePlatform, name: str) -> str:
    value = getattr(msg, name)
    if name == "abi":
        return pb.Abi.Name(value)
    if name == "compat_policy":
        return pb.CompatPolicy.Name(value)
    return str(value) or "host"


def _differences(ours: pb.EffectivePlatform, theirs: pb.EffectivePlatform) -> list[str]:
    out = [
        f"{n} {_field(ours, n)} where the guest has {_field(theirs, n)}"
        for n in _SAME
        if getattr(ours, n) != getattr(theirs, n)
    ]
    if sorted(ours.pv) != sorted(theirs.pv):
        out.append(f"pv {[pb.Pv.Name(p) for p in ours.pv]} where the guest has {[pb.Pv.Name(p) for p in theirs.pv]}")
    gone = sorted(set(theirs.visible_above_level) - set(ours.visible_above_level))
    new = sorted(set(ours.visible_above_level) - set(theirs.visible_above_level))
    if gone or new:
        out.append(f"features above the level {', '.join(gone + new)} would appear to change")
    return out


def check_incoming(
    platforms: Platforms, name: str, spec: pb.VmSpec, effective: pb.EffectivePlatform, cpuid: list[Any], arch: str
) -> None:
    """Refuses (FailedPrecondition naming the culprit) a VM this host cannot give the same platform."""
    host = platforms.host
    what = f"this host cannot give VM {name!r} the same platform"
    if arch != host.arch:
        raise FailedPrecondition(f"{what}: the guest is {arch}, this host is {host.arch}")
    try:
        ours, _rows = platforms.resolve(spec.platform)
    except KvmplatError as e:
        raise FailedPrecondition(f"{what}: {e}") from None
    problems = _differences(ours, effective)
    if ours.compat and effective.compat and ours.compat != effective.compat:
        problems.insert(0, f"this host offers at most {ours.compat}")
    missing = sorted(visible_features(cpuid) - visible_features(list(host.supported)))
    if missing:
        problems.append(f"{', '.join(missing)} would disappear (this host's KVM cannot offer them)")
    if problems:
        raise FailedPrecondition(f"{what}: {'; '.join(problems)}")
