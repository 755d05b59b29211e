"""Linux guests on x86-64: pure loaders turning a bzImage or an ELF vmlinux (plus initramfs and command line) into
a GuestImage that the runner copies into guest RAM. Memory layout: kvmplat.agent.linux.layout's docstring.

Nothing here touches /dev/kvm or the filesystem; every refusal is an InvalidArgument naming the spec field.
"""

from __future__ import annotations

from kvmplat.agent.linux.loader import detect, load_linux

__all__ = ["detect", "load_linux"]
