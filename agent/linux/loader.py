"""load_linux: detect the kernel format, then lay out boot_params, command line, initramfs and MP table around it."""

from __future__ import annotations

from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.guest.image import GuestImage, Segment
from kvmplat.agent.linux.acpi import RSDP_ADDR, acpi_tables
from kvmplat.agent.linux.bootparams import refuse, zero_page
from kvmplat.agent.linux.bzimage import parse_bzimage
from kvmplat.agent.linux.elf import ELF_MAGIC, parse_elf
from kvmplat.agent.linux.kernel import Kernel
from kvmplat.agent.linux.layout import (
    CMDLINE_ADDR,
    CMDLINE_MAX,
    HIMEM,
    MAX_MEMORY,
    MPTABLE_ADDR,
    ZERO_PAGE_ADDR,
    e820_map,
    entry_state,
    entry_state_32,
    fixed_segments,
)
from kvmplat.agent.linux.mptable import MAX_VCPUS, mptable

__all__ = ["detect", "load_linux"]

PAGE = 4096
MIB = 1 << 20


def detect(kernel: bytes) -> Kernel:
    """Parse `kernel` as an ELF vmlinux or a bzImage, whichever its magic says; refuse anything else."""
    if kernel[:4] == ELF_MAGIC:
        return parse_elf(kernel)
    if kernel[0x202:0x206] == b"HdrS":
        return parse_bzimage(kernel)
    raise refuse("neither a bzImage (no 'HdrS' magic at 0x202) nor an ELF vmlinux (no ELF magic)")


def _check_machine(memory_size: int, vcpus: int) -> None:
    """Refuse memory sizes and vCPU counts the layout cannot describe."""
    if not 1 <= vcpus <= MAX_VCPUS:
        raise InvalidArgument.field("spec.vcpus", f"a Linux guest takes 1..{MAX_VCPUS} vCPUs, not {vcpus}")
    if not 2 * HIMEM <= memory_size <= MAX_MEMORY:
        raise InvalidArgument.field(
            "spec.memory_mib", f"a Linux guest takes 2..{MAX_MEMORY // MIB} MiB, not {memory_size / MIB:g}"
        )


def _cmdline(cmdline: str, limit: int) -> bytes:
    """The NUL-terminated command line, refused if the kernel's cmdline_size (or our buffer) cannot hold it."""
    data = cmdline.encode()
    if b"\0" in data:
        raise InvalidArgument.field("spec.boot.cmdline", "the command line contains a NUL byte")
    limit = min(limit, CMDLINE_MAX - 1)
    if len(data) > limit:
        raise InvalidArgument.field("spec.boot.cmdline", f"{len(data)} bytes, the kernel accepts at most {limit}")
    return data + b"\0"


def _place_initrd(kernel: Kernel, size: int, memory_size: int) -> int:
    """Page-aligned address for an initrd of `size` bytes, as high as initrd_addr_max and memory allow."""
    top = min(kernel.header.initrd_addr_max + 1, memory_size)
    addr = (top - size) & ~(PAGE - 1)
    if addr < kernel.end:
        raise InvalidArgument.field(
            "spec.boot.initrd",
            f"{size / MIB:.1f} MiB initramfs does not fit between the kernel (up to {kernel.end / MIB:.1f} MiB) "
            f"and {top / MIB:.1f} MiB: give the guest more memory",
        )
    return addr


def load_linux(kernel: bytes, initrd: bytes | None, cmdline: str, memory_size: int, vcpus: int) -> GuestImage:
    """Everything a Linux guest needs in memory and in its boot vCPU, for a bzImage or an ELF vmlinux."""
    _check_machine(memory_size, vcpus)
    parsed = detect(kernel)
    if parsed.end > memory_size:
        raise refuse(f"the kernel needs memory up to {parsed.end / MIB:.1f} MiB, the guest has {memory_size / MIB:g}")
    command = _cmdline(cmdline, parsed.header.cmdline_size)
    segments = [*fixed_segments(), Segment(CMDLINE_ADDR, command), Segment(MPTABLE_ADDR, mptable(MPTABLE_ADDR, vcpus))]
    segments.append(Segment(RSDP_ADDR, acpi_tables(RSDP_ADDR)))
    ramdisk = (0, 0)
    if initrd:
        ramdisk = (_place_initrd(parsed, len(initrd), memory_size), len(initrd))
        segments.append(Segment(ramdisk[0], initrd))
    e820 = e820_map(memory_size)
    params = zero_page(
        parsed.header,
        code32_start=parsed.start,
        cmdline_addr=CMDLINE_ADDR,
        initrd=ramdisk,
        e820=e820,
        acpi_rsdp=RSDP_ADDR,
    )
    segments += [Segment(ZERO_PAGE_ADDR, params), *parsed.segments]
    return GuestImage(
        segments=tuple(segments),
        bsp=entry_state_32(parsed.entry) if parsed.entry_bits == 32 else entry_state(parsed.entry),
        ap=None,  # application processors wait for the kernel's INIT/SIPI through the in-kernel LAPIC
        description=f"{parsed.description}; {vcpus} vCPU, {memory_size // MIB} MiB",
    )
