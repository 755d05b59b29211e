"""Which domains the libvirt hook judges (`scope` in hook.conf); the others pass untouched, exit 0, nothing printed.

    scope = kvm        (default) domains of type 'kvm', and any domain that carries kvmplat metadata
                       (<kvmplat:vm>); TCG domains (type 'qemu', whatever their arch) are not ours
    scope = opted-in   only domains that carry kvmplat metadata
    scope = all        every domain (a domain kvmplat cannot read is refused)

Under `kvm`, foreign arches pass untouched because libvirt runs them only as TCG domains: a domain of type 'kvm'
whose arch this host's KVM does not run cannot start at all, so judging it refuses nothing that would run, and the
administrator gets kvmplat's reason. Decided from the parsed document alone, before translation, so a domain the hook
leaves alone is never refused for something kvmplat does not understand (an aarch64 TCG guest).
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from kvmplat.client.libvirt.domain_meta import NAMESPACE

__all__ = ["SCOPES", "in_scope"]

SCOPES = ("kvm", "opted-in", "all")


def _has_kvmplat_metadata(root: Element) -> bool:
    metadata = root.find("metadata")
    return metadata is not None and any(child.tag.startswith(f"{{{NAMESPACE}}}") for child in metadata)


def in_scope(root: Element, scope: str) -> bool:
    """Whether the hook judges the domain `root` under `scope`."""
    if scope == "all" or _has_kvmplat_metadata(root):
        return True
    return scope == "kvm" and root.get("type") == "kvm"
