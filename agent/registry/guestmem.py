"""A runner's guest memory mapped into the agent (through the runner's memfd), and page packing in bulk.

The runner reports its memfd (pid, fd); the agent opens /proc/PID/fd/FD and maps the same pages, so snapshots and
migration copy guest memory without a detour through the runner's socket. Packing and unpacking run in C
(agent/kvm/pages.c) on a worker thread: no per-page Python objects, zero pages sent without their data.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterator
from typing import Any

from kvmplat.agent.errors import HostError, InvalidArgument
from kvmplat.agent.kvm._kvmc import ffi, lib

__all__ = ["CHUNK", "PAGE", "GuestMapping", "count_bits", "keep_freed_memory"]

PAGE = 4096
CHUNK = 2 << 20  # bytes of packed pages per message: large enough to amortise a gRPC message, small enough to stay
# in cache through its copies (packed, bytes, protobuf, gRPC) and under the agent's 4 MiB receive limit; 1-4 MiB
# measured alike, 8 MiB slower
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED = 64 << 20


def keep_freed_memory() -> None:
    """Lets malloc reuse the memory of freed page messages instead of returning it to the kernel and faulting it
    in again for the next (each copy into fresh pages cost 10x the copy itself here: 40 -> 500 MB/s streamed)."""
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED)
    libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED)


def count_bits(bitmap: bytes) -> int:
    """The number of pages marked in a dirty bitmap."""
    words = len(bitmap) // 8
    return int(lib.kp_count_bits(ffi.from_buffer("uint64_t[]", bitmap), words)) if words else 0


def _set_bits(bits: bytearray, first: int, end: int) -> None:
    """Sets bits [first, end) of a little-endian bitmap."""
    while first < end and first % 8:
        bits[first // 8] |= 1 << (first % 8)
        first += 1
    whole = (end - first) // 8
    bits[first // 8 : first // 8 + whole] = b"\xff" * whole
    first += whole * 8
    while first < end:
        bits[first // 8] |= 1 << (first % 8)
        first += 1


class GuestMapping:
    """Guest memory of a runner, mapped shared; `writable` for an incoming VM."""

    def __init__(self, pid: int, fd: int, size: int, writable: bool = False) -> None:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            mfd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as e:
            raise HostError(f"cannot open the VM's memory ({path}): {e.strerror}") from None
        try:
            if os.fstat(mfd).st_size != size:
                raise HostError(f"the VM's memory at {path} is not {size} bytes")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            self._map: mmap.mmap | None = mmap.mmap(mfd, size, flags=mmap.MAP_SHARED, prot=prot)
        except BaseException:
            os.close(mfd)
            raise
        self._fd = mfd
        self.size = size
        self.pages = size // PAGE
        self._ptr: Any = ffi.from_buffer("uint8_t[]", self._map, require_writable=writable)
        self.pages_sent = 0
        self.zero_pages = 0

    def present(self) -> bytes:
        """A bitmap of the pages the guest ever touched (the memfd's data extents): reading a hole would allocate it,
        and it is all zeros anyway."""
        bits = bytearray((self.pages + 63) // 64 * 8)
        off = 0
        while off < self.size:
            try:
                start = os.lseek(self._fd, off, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after `off`
                break
            end = os.lseek(self._fd, start, os.SEEK_HOLE)
            _set_bits(bits, start // PAGE, -(-end // PAGE))
            off = end
        return bytes(bits)

    def pack(self, dirty: bytes | None = None, cap: int = CHUNK) -> Iterator[bytes]:
        """Packed records of the pages marked in `dirty` (every page ever touched when None), `cap` bytes at most
        each."""
        dirty = self.present() if dirty is None else dirty
        bitmap = ffi.from_buffer("uint64_t[]", dirty)
        out = ffi.new(f"uint8_t[{cap}]")
        nxt = ffi.new("uint64_t *", 0)
        counts = ffi.new("uint64_t[2]")
        while nxt[0] < self.pages:
            n = lib.kp_pack_pages(self._ptr, self.pages, bitmap, nxt, out, cap, counts)
            if n:
                yield bytes(ffi.buffer(out, n))
        self.pages_sent += int(counts[0])
        self.zero_pages += int(counts[1])

    def unpack(self, data: bytes) -> int:
        """Writes packed records into guest memory; InvalidArgument when they are malformed."""
        n = int(lib.kp_unpack_pages(self._ptr, self.pages, data, len(data)))
        if n < 0:
            raise InvalidArgument("malformed page records (bad page number or length)")
        return n

    def close(self) -> None:
        """Unmaps the memory (idempotent)."""
        if self._map is not None:
            ffi.release(self._ptr)
            self._map.close()
            self._map = None
            os.close(self._fd)

    def __enter__(self) -> GuestMapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
