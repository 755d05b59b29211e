"""VmSpec → minimal libvirt domain XML that `translate` turns back into the same spec.

Standard elements carry what libvirt can say (name, memory, vcpu, os type/machine, kernel boot, `<kvm><hidden>`,
`<hyperv>`, cpu compat models); whatever they cannot say (accel, labels, a builtin payload, a compat with no
libvirt spelling) goes into the kvmplat metadata namespace. Which fields need metadata is decided by translating the
standard part back and comparing, so the two directions cannot drift apart.

Round-trip domain: name without surrounding whitespace, vcpus ≥ 1, memory_mib ≥ 1, pv sorted without repeats,
boot present only when one of its fields is set, strings of characters XML can carry.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from kvmplat.client.libvirt.domain_meta import NAMESPACE
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["render"]

_XML_CHARS = re.compile("^[\t\n\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")
_X86_LEVEL = re.compile(r"^x86-64-v[1-4]$")
_POWER = re.compile(r"^power\d+$")
_FALLBACK = {pb.STRICT: "forbid", pb.BEST_EFFORT: "allow"}
_ARCH_SPELLING = {
    pb.X86_64: "x86_64",
    pb.PPC64: "ppc64",
    pb.PPC64LE: "ppc64le",
    pb.PPC: "ppc",
    pb.ARCH_UNSPECIFIED: "host",
}
_PLATFORM_ATTRS = (
    ("abi", "abi", {pb.BARE_METAL: "bare-metal", pb.SPAPR: "spapr", pb.BOOKE: "booke"}),
    ("compat_policy", "compat-policy", {pb.STRICT: "strict", pb.BEST_EFFORT: "best-effort"}),
    ("accel", "accel", {pb.AUTO: "auto", pb.HV: "hv", pb.PR: "pr"}),
)


def _check(spec: pb.VmSpec) -> None:
    if not spec.name or spec.name != spec.name.strip():
        raise ValueError("spec.name must be non-empty without surrounding whitespace")
    if spec.vcpus < 1 or spec.memory_mib < 1:
        raise ValueError("spec.vcpus and spec.memory_mib must be at least 1")
    strings = [spec.name, spec.platform.compat, spec.boot.kernel, spec.boot.builtin, spec.boot.initrd]
    strings += [spec.boot.cmdline, *spec.labels.keys(), *spec.labels.values()]
    if not all(_XML_CHARS.match(s) for s in strings) or any("\r" in s for s in strings):
        raise ValueError("spec holds characters an XML document cannot carry")
    stripped = [spec.platform.compat, spec.boot.builtin, *spec.labels.keys()]
    if any(s != s.strip() for s in stripped) or "" in spec.labels:
        raise ValueError("compat, builtin and label keys must be non-empty without surrounding whitespace")
    if list(spec.platform.pv) != sorted(set(spec.platform.pv)) or not set(spec.platform.pv) <= {pb.KVM, pb.HYPERV}:
        raise ValueError("spec.platform.pv must be a sorted subset of KVM, HYPERV")


# (abi, arch) → the (libvirt arch, machine) that translate() maps back to them; arch unset is the abi's usual one.
_OS_TYPES: dict[tuple[int, int], tuple[str, str]] = {
    (pb.SPAPR, pb.PPC64LE): ("ppc64le", "pseries"),
    (pb.SPAPR, pb.ARCH_UNSPECIFIED): ("ppc64le", "pseries"),
    (pb.SPAPR, pb.PPC64): ("ppc64", "pseries"),
    (pb.BOOKE, pb.PPC): ("ppc", "ppce500"),
    (pb.BOOKE, pb.PPC64): ("ppc64", "ppce500"),
    (pb.BARE_METAL, pb.PPC): ("ppc", "mac99"),
    (pb.BARE_METAL, pb.PPC64): ("ppc64", "powernv"),
    (pb.BARE_METAL, pb.PPC64LE): ("ppc64le", "powernv"),
    (pb.BARE_METAL, pb.X86_64): ("x86_64", "pc"),
    (pb.BARE_METAL, pb.ARCH_UNSPECIFIED): ("x86_64", "pc"),
}


def _arch_machine(platform: pb.PlatformSpec) -> tuple[str, str]:
    """The (arch, machine) libvirt would write for the abi, arch and bits; ("", "") leaves them to the host (or to
    the metadata, when libvirt has no spelling for the combination)."""
    bits32 = platform.bits == 32
    if platform.abi == pb.BOOKE and platform.arch == pb.ARCH_UNSPECIFIED:
        return ("ppc" if bits32 else "ppc64"), "ppce500"
    arch, machine = _OS_TYPES.get((platform.abi, platform.arch), ("", ""))
    if arch == "x86_64" and bits32:
        return "i686", "pc"
    return arch, machine


def _os(spec: pb.VmSpec, root: ET.Element) -> None:
    os_el = ET.SubElement(root, "os")
    arch, machine = _arch_machine(spec.platform)
    attrs = {"arch": arch, "machine": machine} if arch else {}
    ET.SubElement(os_el, "type", attrs).text = "hvm"
    for tag in ("kernel", "initrd", "cmdline"):
        value = getattr(spec.boot, tag)
        if value:
            ET.SubElement(os_el, tag).text = value


def _features(platform: pb.PlatformSpec, root: ET.Element) -> None:
    hide_kvm, hyperv = pb.KVM not in platform.pv, pb.HYPERV in platform.pv
    if not (hide_kvm or hyperv):
        return
    features = ET.SubElement(root, "features")
    if hyperv:
        ET.SubElement(features, "hyperv", {"mode": "passthrough"})
    if hide_kvm:
        ET.SubElement(ET.SubElement(features, "kvm"), "hidden", {"state": "on"})


def _cpu(platform: pb.PlatformSpec, root: ET.Element) -> None:
    compat, arch = platform.compat, _arch_machine(platform)[0]
    if arch in ("x86_64", "i686") and _X86_LEVEL.match(compat):
        cpu = ET.SubElement(root, "cpu", {"mode": "custom", "match": "exact", "check": "none"})
    elif platform.abi == pb.SPAPR and arch in ("ppc64", "ppc64le") and _POWER.match(compat):
        cpu = ET.SubElement(root, "cpu", {"mode": "host-model"})
    else:
        return
    fallback = _FALLBACK.get(platform.compat_policy)
    ET.SubElement(cpu, "model", {"fallback": fallback} if fallback else {}).text = compat


def _standard(spec: pb.VmSpec, uuid: str) -> ET.Element:
    root = ET.Element("domain", {"type": "kvm"})
    ET.SubElement(root, "name").text = spec.name
    if uuid:
        ET.SubElement(root, "uuid").text = uuid
    ET.SubElement(root, "memory", {"unit": "MiB"}).text = str(spec.memory_mib)
    ET.SubElement(root, "vcpu", {"placement": "static"}).text = str(spec.vcpus)
    _os(spec, root)
    _features(spec.platform, root)
    _cpu(spec.platform, root)
    return root


def _platform_attrs(want: pb.PlatformSpec, got: pb.PlatformSpec) -> str:
    attrs = []
    for field, attr, names in _PLATFORM_ATTRS:
        value = getattr(want, field)
        if value != getattr(got, field):
            if value not in names:
                raise ValueError(f"spec.platform.{field} {value} has no kvmplat metadata spelling")
            attrs.append(f"{attr}={quoteattr(names[value])}")
    if list(want.pv) != list(got.pv):
        attrs.append(f"pv={quoteattr(','.join(pb.Pv.Name(p).lower() for p in want.pv))}")
    if want.compat != got.compat:
        attrs.append(f"compat={quoteattr(want.compat)}")
    if want.bits != got.bits:
        attrs.append(f"bits={quoteattr(str(want.bits))}")
    if want.arch != got.arch:
        attrs.append(f"arch={quoteattr(_ARCH_SPELLING[want.arch])}")
    return " ".join(attrs)


def _metadata(spec: pb.VmSpec, got: pb.VmSpec, opt_in: bool) -> str:
    """The `<metadata>` fragment for what the standard elements did not carry ("" when nothing)."""
    lines = []
    attrs = _platform_attrs(spec.platform, got.platform)
    if attrs:
        lines.append(f"      <kvmplat:platform {attrs}/>")
    if spec.boot.builtin:
        lines.append(f"      <kvmplat:boot builtin={quoteattr(spec.boot.builtin)}/>")
    for key in sorted(spec.labels):
        lines.append(f"      <kvmplat:label key={quoteattr(key)}>{escape(spec.labels[key])}</kvmplat:label>")
    if not lines and not opt_in:
        return ""
    run = ' run="yes"' if opt_in else ""
    head = f"    <kvmplat:vm xmlns:kvmplat={quoteattr(NAMESPACE)}{run}"
    body = [f"{head}/>"] if not lines else [f"{head}>", *lines, "    </kvmplat:vm>"]
    return "\n".join(["  <metadata>", *body, "  </metadata>"])


def render(spec: pb.VmSpec, uuid: str = "", opt_in: bool = False) -> str:
    """Domain XML for `spec` (see the module docstring for the round-trip domain); ValueError outside it."""
    from kvmplat.client.libvirt.domain_xml import translate

    _check(spec)
    root = _standard(spec, uuid)
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    metadata = _metadata(spec, translate(text).spec, opt_in)
    if metadata:
        text = text.replace("\n</domain>", f"\n{metadata}\n</domain>")
    return text + "\n"
