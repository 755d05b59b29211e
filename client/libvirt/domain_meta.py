"""The kvmplat metadata namespace: what a domain states exactly, beyond what libvirt's own elements can say.

Namespace URI `http://kvmplat.io/xmlns/domain/1`. libvirt keeps one element per namespace under `<metadata>`, so
everything sits in one `<kvmplat:vm>`; each attribute that is present overrides what the standard elements imply,
an absent one leaves it derived:

    <metadata>
      <kvmplat:vm xmlns:kvmplat="http://kvmplat.io/xmlns/domain/1" run="yes">
        <kvmplat:platform abi="spapr" pv="kvm" compat="power9" compat-policy="strict" bits="64" accel="hv"
                          arch="ppc64le"/>
        <kvmplat:boot builtin="loop"/>
        <kvmplat:label key="team">web</kvmplat:label>
      </kvmplat:vm>
    </metadata>

`run="yes"` opts the domain in: the libvirt hook then also creates and runs it on the kvmplat agent. Values are
case-insensitive: abi `bare-metal|spapr|booke`, pv a comma-separated subset of `kvm,hyperv` (empty: none),
compat-policy `strict|best-effort`, bits `32|64`, accel `auto|hv|pr`, arch `x86_64|ppc64|ppc64le|ppc|host` (host:
the host's own, whatever os/type says). Anything unknown (attribute, element, value,
a second `kvmplat:vm`, another version of the namespace) is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, TypeVar
from xml.etree.ElementTree import Element

from kvmplat.v1 import agent_pb2 as pb

__all__ = ["NAMESPACE", "NAMESPACE_PREFIX", "Meta", "MetaError", "parse_meta"]

NAMESPACE = "http://kvmplat.io/xmlns/domain/1"
# Any URI under this prefix is ours; only version 1 is understood, so a newer document is refused, not misread.
NAMESPACE_PREFIX = "http://kvmplat.io/xmlns/domain/"

E = TypeVar("E", bound=int)
_ABI = {"bare-metal": pb.BARE_METAL, "spapr": pb.SPAPR, "booke": pb.BOOKE}
_PV = {"kvm": pb.KVM, "hyperv": pb.HYPERV}
_POLICY = {"strict": pb.STRICT, "best-effort": pb.BEST_EFFORT}
_ACCEL = {"auto": pb.AUTO, "hv": pb.HV, "pr": pb.PR}
ARCH_NAMES = {"x86_64": pb.X86_64, "ppc64": pb.PPC64, "ppc64le": pb.PPC64LE, "ppc": pb.PPC, "host": pb.ARCH_UNSPECIFIED}
_PLATFORM_ATTRS = ("abi", "pv", "compat", "compat-policy", "bits", "accel", "arch")


class MetaError(ValueError):
    """The kvmplat metadata is present but not understood."""


class Meta(NamedTuple):
    """What the metadata states; None everywhere means "not stated, derive it" (a NamedTuple: cheap to define,
    which the libvirt hook's start-up time notices)."""

    run: bool = False
    abi: pb.Abi | None = None
    pv: tuple[pb.Pv, ...] | None = None
    compat: str | None = None
    compat_policy: pb.CompatPolicy | None = None
    bits: int | None = None
    accel: pb.Accel | None = None
    arch: pb.Arch | None = None
    builtin: str | None = None
    labels: Mapping[str, str] = {}


def _q(local: str) -> str:
    return f"{{{NAMESPACE}}}{local}"


def _choice(table: Mapping[str, E], what: str, value: str) -> E:
    key = value.strip().lower().replace("_", "-")
    if key not in table:
        raise MetaError(f"kvmplat metadata {what}={value!r}: expected one of {', '.join(table)}")
    return table[key]


def _pv_list(value: str) -> tuple[pb.Pv, ...]:
    names = [n.strip() for n in value.replace(" ", ",").split(",") if n.strip()]
    pvs = [_choice(_PV, "pv", n) for n in names]
    if len(set(pvs)) != len(pvs):
        raise MetaError(f"kvmplat metadata pv={value!r} names an interface twice")
    return tuple(sorted(pvs))


def _bits(value: str) -> int:
    if value.strip() not in ("32", "64"):
        raise MetaError(f"kvmplat metadata bits={value!r}: expected 32 or 64")
    return int(value)


def _check_attrs(el: Element, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(el.attrib) - set(allowed))
    if unknown:
        raise MetaError(f"kvmplat metadata <{where}> has unknown attribute(s) {', '.join(unknown)}")


def _platform(el: Element) -> dict[str, object]:
    _check_attrs(el, _PLATFORM_ATTRS, "platform")
    a = el.attrib
    out: dict[str, object] = {}
    if "abi" in a:
        out["abi"] = _choice(_ABI, "abi", a["abi"])
    if "pv" in a:
        out["pv"] = _pv_list(a["pv"])
    if "compat" in a:
        out["compat"] = a["compat"].strip()
    if "compat-policy" in a:
        out["compat_policy"] = _choice(_POLICY, "compat-policy", a["compat-policy"])
    if "bits" in a:
        out["bits"] = _bits(a["bits"])
    if "accel" in a:
        out["accel"] = _choice(_ACCEL, "accel", a["accel"])
    if "arch" in a:
        out["arch"] = ARCH_NAMES.get(a["arch"].strip().lower()) or _choice(ARCH_NAMES, "arch", a["arch"])
    return out


def _boot(el: Element) -> dict[str, object]:
    _check_attrs(el, ("builtin",), "boot")
    builtin = el.get("builtin", "").strip()
    if not builtin:
        raise MetaError("kvmplat metadata <boot> needs a non-empty builtin attribute")
    return {"builtin": builtin}


def _label(el: Element, labels: dict[str, str]) -> None:
    _check_attrs(el, ("key",), "label")
    key = el.get("key", "")
    if not key or key in labels:
        raise MetaError(f"kvmplat metadata <label> key {key!r} is empty or given twice")
    labels[key] = el.text or ""


def _run(el: Element) -> bool:
    value = el.get("run", "no").strip().lower()
    if value not in ("yes", "no"):
        raise MetaError(f"kvmplat metadata run={el.get('run')!r}: expected yes or no")
    return value == "yes"


def _ours(metadata: Element) -> list[Element]:
    found = []
    for child in metadata:
        uri = child.tag[1:].partition("}")[0] if child.tag.startswith("{") else ""
        if uri == NAMESPACE:
            found.append(child)
        elif uri.startswith(NAMESPACE_PREFIX):
            raise MetaError(f"kvmplat metadata namespace {uri} is not understood (this kvmplat reads {NAMESPACE})")
    return found


def parse_meta(metadata: Element | None) -> Meta:
    """The kvmplat statements under a domain's `<metadata>` element (an empty `Meta` when there are none)."""
    found = [] if metadata is None else _ours(metadata)
    if not found:
        return Meta()
    if len(found) > 1 or found[0].tag != _q("vm"):
        raise MetaError(f"kvmplat metadata must be exactly one <kvmplat:vm> element (found {len(found)})")
    vm = found[0]
    _check_attrs(vm, ("run",), "vm")
    fields: dict[str, object] = {}
    labels: dict[str, str] = {}
    seen: set[str] = set()
    for child in vm:
        local = child.tag.rpartition("}")[2]
        if child.tag not in (_q("platform"), _q("boot"), _q("label")):
            raise MetaError(f"kvmplat metadata has an unknown element <{local}>")
        if local in seen and local != "label":
            raise MetaError(f"kvmplat metadata has more than one <{local}>")
        seen.add(local)
        if local == "platform":
            fields.update(_platform(child))
        elif local == "boot":
            fields.update(_boot(child))
        else:
            _label(child, labels)
    return Meta(run=_run(vm), labels=labels, **fields)  # type: ignore[arg-type]
