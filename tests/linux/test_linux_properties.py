"""Property tests: for any bytes (random, or a valid kernel with corrupted headers) the loader returns a GuestImage
whose segments fit in memory without overlapping, or raises InvalidArgument; never another exception."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.guest.image import GuestImage
from kvmplat.agent.linux import load_linux
from linux_fakes import MIB, fake_bzimage, fake_elf

MEMORY = 64 * MIB
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(kernel: bytes, initrd: bytes | None = None, vcpus: int = 2) -> None:
    """Either a well-formed image or InvalidArgument."""
    try:
        image = load_linux(kernel, initrd, "console=ttyS0", MEMORY, vcpus)
    except InvalidArgument as exc:
        assert exc.violations and str(exc)
        return
    assert isinstance(image, GuestImage)
    spans = sorted((s.gpa, s.gpa + len(s.data)) for s in image.segments)
    assert all(lo >= 0 and hi <= MEMORY for lo, hi in spans)
    assert all(a_hi <= b_lo for (_, a_hi), (b_lo, _) in itertools.pairwise(spans)), spans


def _corrupt(base: bytes, edits: list[tuple[int, int]], limit: int) -> bytes:
    """`base` with bytes replaced at offsets under `limit`."""
    out = bytearray(base)
    for off, value in edits:
        out[off % min(limit, len(out))] = value
    return bytes(out)


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    """Arbitrary input."""
    _check(data)


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_after_magic(tail: bytes) -> None:
    """Arbitrary bytes behind each format's magic reach deeper into the parsers."""
    _check(b"\x7fELF" + tail)
    _check(bytes(0x202) + b"HdrS" + tail)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=12)


@SETTINGS
@given(edits, st.integers(1, 16))
def test_corrupted_bzimage_header(changes: list[tuple[int, int]], vcpus: int) -> None:
    """A valid bzImage with its setup header (0x1f1..0x270) scribbled on."""
    base = fake_bzimage()
    _check(_corrupt(base, [(0x1F1 + off % 0x7F, v) for off, v in changes], len(base)), b"x" * 5000, vcpus)


@SETTINGS
@given(edits)
def test_corrupted_elf_headers(changes: list[tuple[int, int]]) -> None:
    """A valid ELF with its ELF header and program headers (first 232 bytes) scribbled on."""
    _check(_corrupt(fake_elf(), changes, 64 + 3 * 56), b"y" * 3000)


@SETTINGS
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
)
def test_header_fields(version: int, loadflags: int, init_size: int, addr_max: int, pref: int) -> None:
    """Whole-field values rather than byte flips: versions, sizes and addresses at their extremes."""
    kernel = fake_bzimage(
        version=version, loadflags=loadflags, init_size=init_size, initrd_addr_max=addr_max, pref_address=pref
    )
    _check(kernel, b"z" * 100)
