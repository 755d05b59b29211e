"""Live domains read through libvirt-python (`virDomain.XMLDesc`), for `kvmplat create --from-libvirt URI`.

libvirt is imported on first use, so nothing else in kvmplat.client pays for it (or needs it installed).
Connections are read-only: kvmplat never changes a libvirt domain.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LibvirtError", "domain_xml"]


class LibvirtError(RuntimeError):
    """libvirt could not be reached or has no such domain; the message is libvirt's own, prefixed with what failed."""


def _libvirt() -> Any:
    try:
        import libvirt  # type: ignore[import-untyped]
    except ImportError as e:
        raise LibvirtError(f"libvirt-python is not installed ({e})") from None
    # libvirt's default handler prints every error to stderr as well; ours are raised, with the same text.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def domain_xml(uri: str, name: str, inactive: bool = False) -> str:
    """The domain XML of `name` at libvirt `uri` (its live definition, or the persistent one when `inactive`)."""
    libvirt = _libvirt()
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as e:
        raise LibvirtError(f"cannot connect to libvirt at {uri}: {e.get_error_message()}") from None
    try:
        dom = conn.lookupByName(name)
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return str(dom.XMLDesc(flags))
    except libvirt.libvirtError as e:
        raise LibvirtError(f"libvirt at {uri}, domain {name!r}: {e.get_error_message()}") from None
    finally:
        conn.close()
