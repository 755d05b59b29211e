"""What a kernel-format parser (bzImage, ELF) tells the common Linux loader."""

from __future__ import annotations

from dataclasses import dataclass

from kvmplat.agent.guest.image import Segment
from kvmplat.agent.linux.bootparams import SetupHeader

__all__ = ["Kernel"]


@dataclass(frozen=True)
class Kernel:
    """A parsed kernel: its setup header, its bytes at physical addresses, the range it needs, its entry point and
    the boot protocol mode it is entered in (64: long mode on identity page tables; 32: protected mode, no paging)."""

    header: SetupHeader
    segments: tuple[Segment, ...]
    start: int  # lowest physical address the kernel occupies
    end: int  # first physical address past everything it needs before it reads the e820 map
    entry: int
    description: str
    entry_bits: int = 64
