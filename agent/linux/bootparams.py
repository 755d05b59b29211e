"""The Linux x86 boot protocol's setup header and the boot_params "zero page" built from it.

Offsets are those of struct setup_header / struct boot_params (arch/x86/include/uapi/asm/bootparam.h); the setup
header sits at 0x1f1 both in a bzImage file and in boot_params, so one set of offsets serves both.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmplat.agent.errors import InvalidArgument

__all__ = [
    "KERNEL_FIELD",
    "LOADED_HIGH",
    "MIN_PROTOCOL",
    "XLF_KERNEL_64",
    "SetupHeader",
    "parse_setup_header",
    "refuse",
    "synthetic_header",
    "zero_page",
]

KERNEL_FIELD = "spec.boot.kernel"
HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
MIN_PROTOCOL = 0x0206  # cmdline_size appears in 2.06; older kernels need the real-mode path we do not offer
XLF_PROTOCOL = 0x020C  # xloadflags (and so a declared 64-bit entry) appear in 2.12
XLF_KERNEL_64 = 0x1
LOADED_HIGH = 0x1
LOADER_UNDEFINED = 0xFF  # type_of_loader for a boot loader without an assigned id

HDR_START = 0x1F1
HDR_END_MAX = 0x290
ACPI_RSDP_OFF = 0x070  # boot_params.acpi_rsdp_addr (protocol 2.14): where the kernel finds ACPI without a scan
E820_ENTRIES_OFF = 0x1E8
E820_TABLE_OFF = 0x2D0
E820_MAX = 128


def refuse(reason: str) -> InvalidArgument:
    """The error every loader raises for a kernel it will not boot."""
    return InvalidArgument.field(KERNEL_FIELD, reason)


@dataclass(frozen=True)
class SetupHeader:
    """The setup-header fields the loaders read or write; `raw` is the header's bytes from 0x1f1 to its end."""

    raw: bytes
    setup_sects: int
    version: int
    loadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int


# name -> (offset in boot_params / bzImage, struct format)
_FIELDS = {
    "setup_sects": (0x1F1, "B"),
    "boot_flag": (0x1FE, "H"),
    "jump": (0x200, "H"),
    "version": (0x206, "H"),
    "type_of_loader": (0x210, "B"),
    "loadflags": (0x211, "B"),
    "code32_start": (0x214, "I"),
    "ramdisk_image": (0x218, "I"),
    "ramdisk_size": (0x21C, "I"),
    "cmd_line_ptr": (0x228, "I"),
    "initrd_addr_max": (0x22C, "I"),
    "kernel_alignment": (0x230, "I"),
    "relocatable_kernel": (0x234, "B"),
    "xloadflags": (0x236, "H"),
    "cmdline_size": (0x238, "I"),
    "pref_address": (0x258, "Q"),
    "init_size": (0x260, "I"),
}


def _get(buf: bytes, name: str) -> int:
    """Read one named field; the caller has checked the buffer covers it."""
    off, fmt = _FIELDS[name]
    return int(struct.unpack_from("<" + fmt, buf, off)[0])


def _put(buf: bytearray, name: str, value: int) -> None:
    """Write one named field."""
    off, fmt = _FIELDS[name]
    struct.pack_into("<" + fmt, buf, off, value)


def parse_setup_header(image: bytes) -> SetupHeader:
    """Parse and check a bzImage's setup header; refuse anything this loader cannot start in 64-bit mode."""
    if len(image) < 0x206 or image[0x202:0x206] != HDRS_MAGIC:
        raise refuse("not a bzImage: no 'HdrS' setup header magic at offset 0x202")
    if len(image) < 0x208:
        raise refuse(f"truncated bzImage: {len(image)} bytes end inside the setup header")
    version = _get(image, "version")
    if version < MIN_PROTOCOL:
        raise refuse(f"boot protocol {version >> 8}.{version & 0xFF:02d} is too old: 2.06 or newer is required")
    # The header ends where the setup code's first jump lands; boot_params has room for it up to 0x290.
    end = min(0x202 + image[0x201], HDR_END_MAX)
    if len(image) < max(end, 0x264):
        raise refuse(f"truncated bzImage: {len(image)} bytes cannot hold a protocol {version:#06x} setup header")
    if version < XLF_PROTOCOL or not _get(image, "xloadflags") & XLF_KERNEL_64:
        raise refuse("bzImage has no 64-bit entry point (needs boot protocol 2.12+ with XLF_KERNEL_64)")
    if not _get(image, "loadflags") & LOADED_HIGH:
        raise refuse("zImage (loaded low) is not supported: a bzImage with LOADED_HIGH is required")
    return SetupHeader(
        raw=bytes(image[HDR_START:end]),
        setup_sects=_get(image, "setup_sects") or 4,  # 0 means 4 for historical reasons
        version=version,
        loadflags=_get(image, "loadflags"),
        initrd_addr_max=_get(image, "initrd_addr_max"),
        kernel_alignment=_get(image, "kernel_alignment"),
        relocatable=bool(_get(image, "relocatable_kernel")),
        xloadflags=_get(image, "xloadflags"),
        cmdline_size=_get(image, "cmdline_size"),
        pref_address=_get(image, "pref_address"),
        init_size=_get(image, "init_size"),
    )


def synthetic_header(init_size: int) -> SetupHeader:
    """A protocol 2.15 setup header for an ELF vmlinux, carrying just the fields the kernel reads from boot_params."""
    end = 0x26C
    buf = bytearray(end)
    buf[0x202:0x206] = HDRS_MAGIC
    buf[0x201] = end - 0x202
    fields = {"boot_flag": BOOT_FLAG, "version": 0x020F, "loadflags": LOADED_HIGH, "initrd_addr_max": 0x7FFFFFFF}
    fields |= {"kernel_alignment": 0x200000, "xloadflags": XLF_KERNEL_64, "cmdline_size": 2047, "init_size": init_size}
    for name, value in fields.items():
        _put(buf, name, value)
    return parse_setup_header(bytes(buf))


def zero_page(
    hdr: SetupHeader,
    *,
    code32_start: int,
    cmdline_addr: int,
    initrd: tuple[int, int],
    e820: list[tuple[int, int, int]],
    acpi_rsdp: int = 0,
) -> bytes:
    """boot_params: the kernel's setup header plus what the loader decided (cmdline, initrd, e820, loader id, RSDP)."""
    page = bytearray(4096)
    struct.pack_into("<Q", page, ACPI_RSDP_OFF, acpi_rsdp)
    page[HDR_START : HDR_START + len(hdr.raw)] = hdr.raw
    _put(page, "type_of_loader", LOADER_UNDEFINED)
    _put(page, "code32_start", code32_start)
    _put(page, "cmd_line_ptr", cmdline_addr)
    _put(page, "ramdisk_image", initrd[0])
    _put(page, "ramdisk_size", initrd[1])
    page[E820_ENTRIES_OFF] = len(e820)
    for i, (addr, size, kind) in enumerate(e820[:E820_MAX]):
        struct.pack_into("<QQI", page, E820_TABLE_OFF + 20 * i, addr, size, kind)
    return bytes(page)
