"""Which domains the libvirt hook judges (`scope` in hook.conf); the others pass untouched, exit 0, nothing printed.

    scope = kvm        (default) domains of type 'kvm' whose arch this host's KVM runs, and any domain that carries
                       kvmplat metadata (<kvmplat:vm>); TCG (type 'qemu') domains and foreign arches are not ours
    scope = opted-in   only domains that carry kvmplat metadata
    scope = all        every domain (a domain kvmplat cannot read is refused)

Decided from the parsed document alone, before translation, so a domain the hook leaves alone is never refused for
something kvmplat does not understand (an aarch64 TCG guest, a Windows guest's <hyperv> on this host).
"""

from __future__ import annotations

import os
from xml.etree.ElementTree import Element

from kvmplat.client.libvirt.domain_meta import NAMESPACE

__all__ = ["KVM_ARCHES", "SCOPES", "host_kvm_arches", "in_scope"]

SCOPES = ("kvm", "opted-in", "all")
# host machine → the libvirt arches its KVM runs (the guest arches kvmplat knows for that host)
KVM_ARCHES = {
    "x86_64": ("x86_64", "i686"),
    "ppc64le": ("ppc64", "ppc64le", "ppc"),
    "ppc64": ("ppc64", "ppc64le", "ppc"),
}


def host_kvm_arches(machine: str | None = None) -> tuple[str, ...]:
    """The libvirt arches this host's KVM runs (by `uname -m` unless `machine` is given)."""
    return KVM_ARCHES.get(machine or os.uname().machine, ())


def _has_kvmplat_metadata(root: Element) -> bool:
    metadata = root.find("metadata")
    return metadata is not None and any(child.tag.startswith(f"{{{NAMESPACE}}}") for child in metadata)


def in_scope(root: Element, scope: str, arches: tuple[str, ...]) -> bool:
    """Whether the hook judges the domain `root` under `scope` on a host whose KVM runs `arches`."""
    if scope == "all":
        return True
    if _has_kvmplat_metadata(root):
        return True
    if scope == "opted-in":
        return False
    type_el = root.find("os/type")
    arch = (type_el.get("arch", "") if type_el is not None else "").strip()
    return root.get("type") == "kvm" and (not arch or arch in arches)  # no arch: libvirt uses the host's
