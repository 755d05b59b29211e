"""libvirt domain XML → kvmplat `VmSpec`, a pure translation (no I/O), and its reverse.

`translate(xml_text)` returns a frozen `Translation`: the spec, warnings for everything understood but not applied
(disks, NICs, graphics, tuning, ...), the domain's uuid, and whether the domain opted in to be run by kvmplat
through the metadata namespace (`kvmplat.client.libvirt.domain_meta`, URI `http://kvmplat.io/xmlns/domain/1`).
Malformed, hostile (DTDs, entities, oversize) or ambiguous documents raise `DomainXmlError` with one clear line; a
readable domain asking for a platform no agent can give (an exact CPU model kvmplat has no level for, a machine no
KVM runs) raises its subclass `DomainRefused`, which callers report as a refusal (the CLI's exit 1), not bad input.

What is translated (everything else under `<domain>` is a warning, never a silent drop):

    <domain type>          kvm; qemu (TCG: no KVM pv) and test (libvirt's test driver) with a warning
    <name>, <uuid>         spec.name; Translation.uuid (canonical 8-4-4-4-12, lower case)
    <memory unit>          spec.memory_mib, every libvirt unit, rounded up to MiB (warned when not whole)
    <currentMemory>        warned when below <memory> (kvmplat has no balloon)
    <vcpu current>         spec.vcpus = current (or the count); placement/cpuset warned
    <os><type arch machine> arch, abi and bits (domain_platform); kernel/initrd/cmdline → spec.boot
    <cpu mode><model>      compat (x86 levels, POWER compat modes) and compat_policy (fallback forbid/allow)
    <features>             <kvm><hidden> drops pv KVM; <hyperv> adds pv HYPERV
    <metadata><kvmplat:vm> exact platform/boot/labels and opt-in (`run="yes"`)

Accepted without effect and without a warning: <title>, <description>, other applications' metadata,
<devices><emulator>, devices with model='none', <serial>/<console> (kvmplat's console is COM1), <clock offset='utc'>
without timers, and the default <on_poweroff>destroy, <on_reboot>restart, <on_crash>destroy.
Refused: <launchSecurity> (running without it would silently drop memory encryption).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

import defusedxml  # type: ignore[import-untyped]
import defusedxml.ElementTree as safe_et  # type: ignore[import-untyped]
from kvmplat.client.libvirt.domain_meta import NAMESPACE, Meta, MetaError, parse_meta
from kvmplat.client.libvirt.domain_platform import (
    PlatformXmlError,
    PlatformXmlRefused,
    cpu_compat,
    os_platform,
    pv_of,
)
from kvmplat.client.libvirt.domain_units import UnitError, memory_kib
from kvmplat.v1 import agent_pb2 as pb

__all__ = [
    "MAX_XML_BYTES",
    "NAMESPACE",
    "DomainRefused",
    "DomainXmlError",
    "Translation",
    "parse_document",
    "to_domain_xml",
    "translate",
    "translate_root",
]

# libvirt's own domain documents are kilobytes; a cap far above that bounds memory and time for hostile input.
MAX_XML_BYTES = 2 * 1024 * 1024
_UUID = re.compile(r"^[0-9a-f]{32}$")
_SINGLE = ("name", "uuid", "memory", "currentMemory", "vcpu", "os", "cpu", "features", "metadata", "devices")
_QUIET = {"name", "uuid", "title", "description", "metadata", "memory", "currentMemory", "vcpu", "os", "cpu"}
_QUIET |= {"features", "devices", "clock", "on_poweroff", "on_reboot", "on_crash"}
_DEFAULT_ACTIONS = {"on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "destroy"}
_OS_TRANSLATED = {"type", "kernel", "initrd", "cmdline"}
_QUIET_DEVICES = {"emulator", "serial", "console"}


class DomainXmlError(ValueError):
    """The document is not a domain kvmplat can read: malformed, hostile, ambiguous or unsupported."""


class DomainRefused(DomainXmlError):
    """The domain is readable, but its platform is one no kvmplat agent can give: a refusal, like an agent's."""


@dataclass(frozen=True)
class Translation:
    """A translated domain. `spec` is a fresh message owned by the caller; `os_type` is e.g. "ppc64le pseries"."""

    spec: pb.VmSpec
    warnings: tuple[str, ...]
    uuid: str
    opt_in: bool
    os_type: str = ""


def parse_document(xml_text: str) -> Element:
    """The root element of `xml_text`, parsed with DTDs, entities and external references refused."""
    if len(xml_text) > MAX_XML_BYTES or len(xml_text.encode("utf-8", "surrogatepass")) > MAX_XML_BYTES:
        raise DomainXmlError(f"domain XML is larger than {MAX_XML_BYTES} bytes")
    try:
        root: Element = safe_et.fromstring(xml_text, forbid_dtd=True)
    except defusedxml.DTDForbidden:
        raise DomainXmlError("domain XML with a document type declaration (DTD) is refused") from None
    except (defusedxml.EntitiesForbidden, defusedxml.ExternalReferenceForbidden):
        raise DomainXmlError("domain XML declaring entities or external references is refused") from None
    except defusedxml.DefusedXmlException as e:
        raise DomainXmlError(f"domain XML refused: {type(e).__name__}") from None
    except ParseError as e:
        raise DomainXmlError(f"domain XML is not well-formed: {e}") from None
    if root.tag != "domain":
        raise DomainXmlError(f"the document's root element is <{root.tag}>, not <domain>")
    return root


def _check_single(root: Element) -> None:
    counts = Counter(child.tag for child in root)
    twice = sorted(tag for tag in _SINGLE if counts[tag] > 1)
    if twice:
        raise DomainXmlError(f"<domain> has more than one <{twice[0]}>: ambiguous")


def _name(root: Element) -> str:
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainXmlError("<domain> has no <name>")
    return name


def _uuid(root: Element) -> str:
    text = root.findtext("uuid")
    if text is None:
        return ""
    compact = text.strip().lower().replace("-", "")
    if not _UUID.match(compact):
        raise DomainXmlError(f"<uuid> {text.strip()!r} is not a UUID")
    return f"{compact[:8]}-{compact[8:12]}-{compact[12:16]}-{compact[16:20]}-{compact[20:]}"


def _kib(el: Element, what: str) -> int:
    try:
        return memory_kib(el.text or "", el.get("unit"))
    except UnitError as e:
        raise DomainXmlError(f"<{what}>: {e}") from None


def _memory_mib(root: Element, notes: list[str]) -> int:
    el = root.find("memory")
    if el is None:
        raise DomainXmlError("<domain> has no <memory>")
    kib = _kib(el, "memory")
    if kib == 0:
        raise DomainXmlError("<memory> is 0: a guest needs memory")
    mib = -(-kib // 1024)
    if kib % 1024:
        notes.append(f"memory {kib} KiB is not a whole MiB: rounded up to {mib} MiB")
    current = root.find("currentMemory")
    if current is not None and _kib(current, "currentMemory") < kib:
        notes.append(
            f"currentMemory {_kib(current, 'currentMemory')} KiB not applied (no balloon): guest gets {mib} MiB"
        )
    return mib


def _count(text: str, what: str) -> int:
    if not re.fullmatch(r"\s*[0-9]{1,10}\s*", text) or not 0 < int(text) < 2**32:
        raise DomainXmlError(f"{what} {text.strip()!r} is not a positive count")
    return int(text)


def _vcpus(root: Element, notes: list[str]) -> int:
    el = root.find("vcpu")
    if el is None:
        return 1
    count = _count(el.text or "", "<vcpu>")
    current = _count(el.get("current", str(count)), "<vcpu current>")
    if current > count:
        raise DomainXmlError(f"<vcpu current='{current}'> is above the vcpu count {count}")
    if current < count:
        notes.append(f"vcpu: {current} of {count} vCPUs run; kvmplat has no vCPU hotplug to {count}")
    if el.get("placement", "static") != "static" or el.get("cpuset"):
        notes.append("vcpu placement/cpuset not applied: kvmplat does not pin vCPUs")
    return current


def _boot(os_el: Element | None, meta: Meta, notes: list[str]) -> pb.BootSpec | None:
    def text(tag: str) -> str:
        """The text of an os child; "" when absent or empty (libvirt treats both as unset)."""
        return "" if os_el is None else (os_el.findtext(tag) or "")

    kernel, initrd, cmdline = text("kernel"), text("initrd"), text("cmdline")
    if kernel and meta.builtin:
        raise DomainXmlError("both os/kernel and kvmplat:boot builtin are given: ambiguous boot source")
    if (initrd or cmdline) and not kernel:
        notes.append("os/initrd or os/cmdline without os/kernel: kept, but they only apply to a kernel boot")
    if not (kernel or initrd or cmdline or meta.builtin):
        notes.append("no os/kernel and no kvmplat:boot: kvmplat cannot boot from disks or firmware")
        return None
    boot = pb.BootSpec(initrd=initrd, cmdline=cmdline)
    if kernel:
        boot.kernel = kernel
    elif meta.builtin:
        boot.builtin = meta.builtin
    return boot


def _os_notes(os_el: Element | None, notes: list[str]) -> None:
    if os_el is None:
        return
    others = sorted({c.tag for c in os_el if c.tag not in _OS_TRANSLATED})
    if os_el.get("firmware"):
        others.insert(0, f"firmware={os_el.get('firmware')}")
    if others:
        notes.append(f"os elements not applied: {', '.join(others)}")


def _device_notes(devices: Element | None, notes: list[str]) -> None:
    if devices is None:
        return
    counts = Counter(
        d.tag for d in devices if d.tag not in _QUIET_DEVICES and not (d.get("model") == "none" and len(d) == 0)
    )
    if counts:
        listed = ", ".join(f"{n} {tag}" for tag, n in sorted(counts.items()))
        notes.append(f"devices not run by kvmplat: {listed}")


def _domain_notes(root: Element, notes: list[str]) -> None:
    if root.find("launchSecurity") is not None:
        raise DomainXmlError("<launchSecurity> is refused: kvmplat cannot encrypt guest memory")
    others = sorted({c.tag for c in root if c.tag not in _QUIET})
    if others:
        notes.append(f"elements not applied: {', '.join(others)}")
    clock = root.find("clock")
    if clock is not None and (clock.get("offset", "utc") != "utc" or len(clock)):
        notes.append("clock offset/timers not applied: the guest keeps kvmplat's clock (utc)")
    for tag, default in _DEFAULT_ACTIONS.items():
        action = (root.findtext(tag) or default).strip()
        if action != default:
            notes.append(f"{tag} {action} not applied: kvmplat stops the VM on poweroff and marks a crash CRASHED")


def _domain_type(root: Element, notes: list[str]) -> str:
    kind = root.get("type", "")
    if kind == "qemu":
        notes.append("domain type 'qemu' (TCG) is run on KVM; like TCG, no KVM pv interface is offered")
    elif kind == "test":
        notes.append("domain type 'test' (libvirt's test driver) is run on KVM")
    elif kind != "kvm":
        raise DomainXmlError(f"domain type {kind!r} is not supported: kvmplat runs KVM guests (type 'kvm')")
    return kind


def _platform(root: Element, kind: str, notes: list[str]) -> tuple[pb.PlatformSpec, str]:
    try:
        osp = os_platform(root.find("os"), notes)
        compat, policy = cpu_compat(root.find("cpu"), osp.family, osp.abi, notes)
        pv = pv_of(kind, root.find("features"), notes)
    except PlatformXmlRefused as e:
        raise DomainRefused(str(e)) from None
    except PlatformXmlError as e:
        raise DomainXmlError(str(e)) from None
    platform = pb.PlatformSpec(abi=osp.abi, pv=pv, compat=compat, compat_policy=policy, bits=osp.bits, arch=osp.arch)
    return platform, osp.summary


_ENUM_NAMES: dict[str, Callable[[int], str]] = {
    "abi": pb.Abi.Name,
    "compat_policy": pb.CompatPolicy.Name,
    "accel": pb.Accel.Name,
    "arch": pb.Arch.Name,
}


def _show(field: str, value: object) -> str:
    return _ENUM_NAMES[field](int(str(value))) if field in _ENUM_NAMES else repr(value)


def _override(platform: pb.PlatformSpec, meta: Meta, notes: list[str]) -> None:
    stated = {
        "abi": meta.abi,
        "compat": meta.compat,
        "compat_policy": meta.compat_policy,
        "bits": meta.bits,
        "accel": meta.accel,
        "arch": meta.arch,
    }
    for field, value in stated.items():
        if value is None:
            continue
        derived = getattr(platform, field)
        if derived and derived != value:
            notes.append(f"kvmplat metadata sets {field} {_show(field, value)} over {_show(field, derived)}")
        setattr(platform, field, value)
    if meta.pv is not None:
        if tuple(platform.pv) != meta.pv:
            names = [pb.Pv.Name(p) for p in meta.pv] or ["none"]
            notes.append(f"kvmplat metadata sets pv {', '.join(names)} over what the domain implies")
        platform.ClearField("pv")
        platform.pv.extend(meta.pv)


def _meta(root: Element) -> Meta:
    try:
        return parse_meta(root.find("metadata"))
    except MetaError as e:
        raise DomainXmlError(str(e)) from None


def translate(xml_text: str) -> Translation:
    """Translate one libvirt domain document into a VmSpec with warnings; raise DomainXmlError when unreadable."""
    return translate_root(parse_document(xml_text))


def translate_root(root: Element) -> Translation:
    """`translate` of a document already parsed by `parse_document`."""
    _check_single(root)
    notes: list[str] = []
    kind = _domain_type(root, notes)
    name, uuid = _name(root), _uuid(root)
    memory_mib = _memory_mib(root, notes)
    vcpus = _vcpus(root, notes)
    platform, os_type = _platform(root, kind, notes)
    meta = _meta(root)
    _override(platform, meta, notes)
    os_el = root.find("os")
    _os_notes(os_el, notes)
    boot = _boot(os_el, meta, notes)
    _device_notes(root.find("devices"), notes)
    _domain_notes(root, notes)
    spec = pb.VmSpec(name=name, vcpus=vcpus, memory_mib=memory_mib, platform=platform, labels=meta.labels)
    spec.platform.SetInParent()
    if boot is not None:
        spec.boot.CopyFrom(boot)
    return Translation(spec=spec, warnings=tuple(notes), uuid=uuid, opt_in=meta.run, os_type=os_type)


def to_domain_xml(spec: pb.VmSpec, uuid: str = "", opt_in: bool = False) -> str:
    """Minimal libvirt domain XML for `spec`; `translate` of it gives `spec` back."""
    from kvmplat.client.libvirt.domain_reverse import render

    return render(spec, uuid=uuid, opt_in=opt_in)
