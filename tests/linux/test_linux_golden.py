"""Golden tests: the zero page, e820 map, GDT, page tables, MP table and entry state for a fake bzImage and ELF.

Regenerate after an intended layout change with `KVMPLAT_REGEN_GOLDEN=1 pytest tests/linux` (the `golden` fixture),
then review the diff of tests/golden/linux/*.txt before committing.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from kvmplat.agent.guest.image import GuestImage
from kvmplat.agent.linux import load_linux
from linux_fakes import BZ_PAYLOAD, MIB, dump, fake_bzimage, fake_elf

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "linux"
INITRD = b"07070100000000" + bytes(4000)
CMDLINE = "console=ttyS0 reboot=t panic=-1 earlyprintk=serial,ttyS0,115200 nokaslr"


def _check(name: str, image: GuestImage, golden: Any) -> None:
    """Compare the dump with the golden file (the `golden` fixture rewrites it under KVMPLAT_REGEN_GOLDEN=1)."""
    text = dump(image)
    assert text == golden.text(GOLDEN / f"{name}.txt", text), (
        f"{name} layout changed; KVMPLAT_REGEN_GOLDEN=1 if intended"
    )


def _zero_page(image: GuestImage) -> bytes:
    """The boot_params segment."""
    return next(s.data for s in image.segments if s.gpa == 0x7000)


@pytest.mark.parametrize("vcpus", [1, 2])
def test_bzimage_golden(vcpus: int, golden: Any) -> None:
    """A relocatable bzImage: payload at pref_address, entered there (32-bit protocol), initrd at the top of 64 MiB."""
    image = load_linux(fake_bzimage(), INITRD, CMDLINE, 64 * MIB, vcpus)
    _check(f"bzimage-{vcpus}cpu", image, golden)


def test_elf_golden(golden: Any) -> None:
    """An ELF vmlinux with a virtual e_entry: segments at p_paddr, entry converted to physical."""
    image = load_linux(fake_elf(), INITRD, CMDLINE, 64 * MIB, 2)
    _check("elf-2cpu", image, golden)


def test_bzimage_semantics() -> None:
    """What the golden file pins, said in words: where things are and what the kernel reads."""
    image = load_linux(fake_bzimage(), INITRD, CMDLINE, 64 * MIB, 1)
    zp = _zero_page(image)
    assert zp[0x202:0x206] == b"HdrS" and zp[0x210] == 0xFF
    cmd_ptr, initrd_addr_max = struct.unpack_from("<II", zp, 0x228)
    ramdisk_image, ramdisk_size = struct.unpack_from("<II", zp, 0x218)
    assert cmd_ptr == 0x20000 and initrd_addr_max == 0x7FFFFFFF
    assert ramdisk_size == len(INITRD) and ramdisk_image % 4096 == 0 and ramdisk_image + ramdisk_size <= 64 * MIB
    assert (0x1000000, BZ_PAYLOAD) in {(s.gpa, s.data) for s in image.segments}
    # the 32-bit boot protocol at startup_32: protected mode, paging off, flat segments, esi -> boot_params
    assert image.bsp.regs["rip"] == 0x1000000 and image.bsp.regs["rsi"] == 0x7000
    assert image.bsp.control["cr0"] & 0x80000001 == 0x1 and image.bsp.control["efer"] == 0
    cs, ds = image.bsp.segments["cs"], image.bsp.segments["ds"]
    assert (cs.l, cs.db, cs.selector, ds.selector, cs.limit) == (0, 1, 0x10, 0x18, 0xFFFFFFFF)
    assert image.ap is None


def test_bzimage_non_relocatable_loads_at_1mib() -> None:
    """Without relocatable_kernel the protected-mode code goes to the classic 1 MiB."""
    image = load_linux(fake_bzimage(relocatable_kernel=0), None, "", 64 * MIB, 1)
    assert image.bsp.regs["rip"] == 0x100000
    assert struct.unpack_from("<II", _zero_page(image), 0x218) == (0, 0)


def test_elf_physical_entry_kept() -> None:
    """Debian's vmlinux has a physical e_entry (phys_startup_64): used as is."""
    image = load_linux(fake_elf(entry=0x1000000), None, "console=ttyS0", 64 * MIB, 1)
    assert image.bsp.regs["rip"] == 0x1000000


def test_initrd_respects_initrd_addr_max() -> None:
    """The initrd ends at or below initrd_addr_max even when memory goes further."""
    image = load_linux(fake_bzimage(initrd_addr_max=0x3FFFFFF), INITRD, "", 128 * MIB, 1)
    addr, size = struct.unpack_from("<II", _zero_page(image), 0x218)
    assert addr + size <= 0x4000000 and addr == (0x4000000 - size) & ~0xFFF
