"""bzImage: the setup sectors are read for their header only; the protected-mode part is loaded and entered at its
start, through the 32-bit boot protocol (startup_32), as QEMU does.

The 64-bit entry (startup_64, 0x200 past the start when the header sets XLF_KERNEL_64) would work too, but on our
page tables the decompressor then allocates and byte-clears extra page-table pages: about 0.1 s more to the first
console line on a host that emulates guest instructions (measured with bench/boot.py and perf's
kvm:kvm_emulate_insn count: 699k vs 612k instructions). A relocatable kernel is placed at its pref_address, as the
boot protocol asks of a relocating loader, so the decompressor can work in place; otherwise at the classic 1 MiB.
"""

from __future__ import annotations

from kvmplat.agent.guest.image import Segment
from kvmplat.agent.linux.bootparams import parse_setup_header, refuse
from kvmplat.agent.linux.kernel import Kernel
from kvmplat.agent.linux.layout import HIMEM

__all__ = ["ENTRY_64_OFFSET", "parse_bzimage"]

ENTRY_64_OFFSET = 0x200


def _load_address(pref_address: int, alignment: int, relocatable: bool) -> int:
    """Where the protected-mode kernel goes: pref_address when relocatable and sensible, else 1 MiB."""
    if not relocatable or pref_address < HIMEM:
        return HIMEM
    if alignment and alignment & (alignment - 1) == 0 and pref_address % alignment:
        return HIMEM  # a misaligned preference is a corrupt header, and 1 MiB always works
    return pref_address


def parse_bzimage(image: bytes) -> Kernel:
    """Check a bzImage and describe where its protected-mode code goes and how much room it needs."""
    hdr = parse_setup_header(image)
    setup_end = (hdr.setup_sects + 1) * 512
    if len(image) <= setup_end + ENTRY_64_OFFSET:
        raise refuse(f"truncated bzImage: {len(image)} bytes, but the setup code alone takes {setup_end}")
    payload = image[setup_end:]
    load = _load_address(hdr.pref_address, hdr.kernel_alignment, hdr.relocatable)
    # init_size covers the decompressor's whole working area from the load address, which includes the payload
    end = load + max(hdr.init_size, len(payload))
    version = f"{hdr.version >> 8}.{hdr.version & 0xFF:02d}"
    return Kernel(
        header=hdr,
        segments=(Segment(load, payload),),
        start=load,
        end=end,
        entry=load,
        description=f"bzImage, boot protocol {version}, {len(payload)} bytes at {load:#x}, needs up to {end:#x}",
        entry_bits=32,
    )
