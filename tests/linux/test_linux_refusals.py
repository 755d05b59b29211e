"""Every kernel the loaders will not start is refused with InvalidArgument naming the field and a clear reason."""

from __future__ import annotations

import pytest
from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.linux import load_linux
from linux_fakes import MIB, fake_bzimage, fake_elf

BZ = fake_bzimage()


def _refusal(
    kernel: bytes, initrd: bytes | None = None, cmdline: str = "", memory: int = 64 * MIB, vcpus: int = 1
) -> str:
    """The single violation's "field: reason" for a load that must fail."""
    with pytest.raises(InvalidArgument) as info:
        load_linux(kernel, initrd, cmdline, memory, vcpus)
    assert len(info.value.violations) == 1
    field, reason = info.value.violations[0]
    return f"{field}: {reason}"


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        (b"", "neither a bzImage"),
        (b"MZ" + bytes(4096), "neither a bzImage"),
        (fake_bzimage(version=0x0205), "boot protocol 2.05 is too old: 2.06 or newer is required"),
        (fake_bzimage(version=0x020A), "no 64-bit entry point"),
        (fake_bzimage(xloadflags=0), "no 64-bit entry point"),
        (fake_bzimage(loadflags=0), "zImage (loaded low) is not supported"),
        (BZ[:0x300], "truncated bzImage"),
        (fake_elf(elf_class=1), "not 64-bit little-endian"),
        (fake_elf(machine=183), "machine 183, not x86-64"),
        (fake_elf(e_type=3), "not an executable"),
        (fake_elf(low_paddr=0x8000), "would overwrite the boot structures below 1 MiB"),
        (fake_elf(entry=0x5000000), "entry point 0x5000000 lies in no PT_LOAD"),
        (fake_elf()[:40], "truncated ELF file"),
        (fake_elf()[:100], "program headers are missing or lie outside the file"),
    ],
)
def test_bad_kernels_refused(kernel: bytes, expected: str) -> None:
    """Non-kernels, old protocols, foreign or malformed ELF files."""
    message = _refusal(kernel)
    assert message.startswith("spec.boot.kernel: ") and expected in message


def test_kernel_larger_than_memory() -> None:
    """init_size beyond the guest's memory is refused before anything runs."""
    assert "the kernel needs memory up to" in _refusal(fake_bzimage(init_size=0x8000000))


def test_initrd_that_does_not_fit() -> None:
    """An initramfs that would overlap the kernel names the initrd field."""
    assert _refusal(BZ, initrd=bytes(60 * MIB)).startswith("spec.boot.initrd: 60.0 MiB initramfs does not fit")


def test_cmdline_limits() -> None:
    """cmdline_size from the header bounds the command line; NUL bytes are refused."""
    assert "at most 255" in _refusal(fake_bzimage(cmdline_size=255), cmdline="x" * 256)
    assert "NUL" in _refusal(BZ, cmdline="a\0b")


@pytest.mark.parametrize(("memory", "vcpus", "field"), [(64 * MIB, 0, "spec.vcpus"), (64 * MIB, 255, "spec.vcpus")])
def test_machine_limits(memory: int, vcpus: int, field: str) -> None:
    """vCPU counts the MP table cannot describe."""
    assert _refusal(BZ, memory=memory, vcpus=vcpus).startswith(field)


@pytest.mark.parametrize("memory", [MIB, 4096 * MIB])
def test_memory_limits(memory: int) -> None:
    """Under 2 MiB nothing fits; over 3 GiB the single RAM slot would cover the APIC windows."""
    assert _refusal(BZ, memory=memory).startswith("spec.memory_mib: a Linux guest takes 2..3072 MiB")
