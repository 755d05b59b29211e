"""agent/linux/acpi.py: the RSDP and empty RSDT are valid ACPI 1.0 structures, found where the kernel looks first."""

from __future__ import annotations

import struct

from kvmplat.agent.linux import load_linux
from kvmplat.agent.linux.acpi import RSDP_ADDR, RSDT_OFFSET, acpi_tables
from linux_fakes import MIB, fake_bzimage, fake_elf


def test_rsdp_and_rsdt_checksums_and_links() -> None:
    data = acpi_tables(RSDP_ADDR)
    rsdp, rsdt = data[:20], data[RSDT_OFFSET:]
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp) % 256 == 0 and rsdp[15] == 0  # ACPI 1.0: 20 bytes, RSDT only
    assert struct.unpack_from("<I", rsdp, 16)[0] == RSDP_ADDR + RSDT_OFFSET
    assert rsdt[:4] == b"RSDT" and struct.unpack_from("<I", rsdt, 4)[0] == len(rsdt) == 36  # no table entries
    assert sum(rsdt) % 256 == 0


def test_rsdp_sits_on_the_first_paragraph_the_kernel_scans() -> None:
    assert RSDP_ADDR == 0xE0000 and RSDP_ADDR % 16 == 0


def test_loaders_place_it_and_name_it_in_boot_params() -> None:
    for kernel in (fake_bzimage(), fake_elf()):
        image = load_linux(kernel, None, "console=ttyS0", 64 * MIB, 1)
        segments = {s.gpa: s.data for s in image.segments}
        assert segments[RSDP_ADDR] == acpi_tables(RSDP_ADDR)
        assert struct.unpack_from("<Q", segments[0x7000], 0x070)[0] == RSDP_ADDR  # boot_params.acpi_rsdp_addr
