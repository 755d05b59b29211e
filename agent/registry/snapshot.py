"""The snapshot file format (version 1; README.md, "Snapshots"), written as a stream and checked whole before use.

    magic "KVMPSNAP" | u32 version | u32 0
    sections, each: u32 type | u32 0 | u64 length | payload
        1 HEADER  JSON: format, spec, effective platform, the exact CPUID table, arch, accel, vCPUs, memory size,
                  the VM's last event sequence number, time, agent version
        2 STATE   JSON: every vCPU's and the VM's KVM state and kvmplat's devices (agent/runner/vmstate.py)
        3 PAGES   packed page records (agent/kvm/pages.c); a page never written is absent, a zero page has no data
        END (0xffffffff), last: 32 bytes of SHA-256 over every byte before them
All integers little-endian. A reader refuses a file with another magic or version, sections out of order, anything
after END, a truncated section, or a hash that does not match, before it builds anything.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from kvmplat.agent.errors import InvalidArgument

__all__ = ["FORMAT_VERSION", "MAGIC", "Snapshot", "SnapshotWriter", "read_snapshot"]

MAGIC = b"KVMPSNAP"
FORMAT_VERSION = 1
HEADER, STATE, PAGES, END = 1, 2, 3, 0xFFFFFFFF
_PRELUDE = struct.Struct("<8sII")
_SECTION = struct.Struct("<IIQ")
MAX_JSON = 64 << 20


class SnapshotWriter:
    """Turns header, state and page records into the file's bytes, hashing as it goes."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def _out(self, data: bytes) -> bytes:
        self._hash.update(data)
        return data

    def prelude(self) -> bytes:
        """The magic and version."""
        return self._out(_PRELUDE.pack(MAGIC, FORMAT_VERSION, 0))

    def section(self, kind: int, payload: bytes) -> bytes:
        """One section."""
        return self._out(_SECTION.pack(kind, 0, len(payload)) + payload)

    def json_section(self, kind: int, value: dict[str, Any]) -> bytes:
        """A HEADER or STATE section."""
        return self.section(kind, json.dumps(value, separators=(",", ":")).encode())

    def end(self) -> bytes:
        """The END section with the hash of everything before its payload."""
        head = self._out(_SECTION.pack(END, 0, 32))
        return head + self._hash.digest()


@dataclass
class Snapshot:
    """A checked snapshot: its header and state, and where its page sections lie in the file."""

    header: dict[str, Any]
    state: dict[str, Any]
    pages: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) in the file

    def page_chunks(self, f: IO[bytes]) -> Iterator[bytes]:
        """The page sections' payloads, read from the (already checked) file."""
        for off, length in self.pages:
            f.seek(off)
            yield f.read(length)


def _bad(why: str) -> InvalidArgument:
    return InvalidArgument(f"not a usable kvmplat snapshot: {why}")


def _read_exact(f: IO[bytes], n: int, h: Any, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _bad(f"truncated in {what} (the file ends {n - len(data)} bytes early)")
    h.update(data)
    return data


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"its {what} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise _bad(f"its {what} is not a JSON object")
    return value


def _sections(f: IO[bytes], h: Any) -> Iterator[tuple[int, int, int]]:
    """(kind, offset, length) of each section up to and excluding END, whose hash it checks."""
    while True:
        kind, _, length = _SECTION.unpack(_read_exact(f, _SECTION.size, h, "a section header"))
        if kind == END:
            want = h.digest()
            got = f.read(33)
            if len(got) < 32:
                raise _bad("truncated in its SHA-256 trailer")
            if len(got) > 32 or length != 32:
                raise _bad("bytes follow its END section")
            if got != want:
                raise _bad("its SHA-256 does not match its contents (the file was altered or damaged)")
            return
        if kind not in (HEADER, STATE, PAGES):
            raise _bad(f"unknown section type {kind:#x} (the file was altered or damaged)")
        offset = f.tell()
        yield kind, offset, length
        if f.tell() != offset + length:  # the caller did not read it: hash it here
            f.seek(offset)
            while length > 0:
                length -= len(_read_exact(f, min(length, 1 << 20), h, "a page section"))


def read_snapshot(f: IO[bytes]) -> Snapshot:
    """Checks a whole snapshot file (magic, version, structure, SHA-256) and returns it; InvalidArgument if not."""
    h = hashlib.sha256()
    magic, version, _ = _PRELUDE.unpack(_read_exact(f, _PRELUDE.size, h, "its first bytes"))
    if magic != MAGIC:
        raise _bad("it does not start with the kvmplat snapshot magic")
    if version != FORMAT_VERSION:
        raise _bad(f"format version {version}; this agent reads version {FORMAT_VERSION}")
    order: list[int] = []
    parts: dict[int, bytes] = {}
    pages: list[tuple[int, int]] = []
    for kind, offset, length in _sections(f, h):
        if order and kind < order[-1]:
            raise _bad("its sections are out of order")
        order.append(kind)
        if kind == PAGES:
            pages.append((offset, length))
            continue
        if length > MAX_JSON or kind in parts:
            raise _bad("a header or state section is repeated or too large")
        parts[kind] = _read_exact(f, length, h, "a header or state section")  # decoded once the hash matched
    if HEADER not in parts or STATE not in parts:
        raise _bad("it lacks its header or state section")
    header = _json(parts[HEADER], "header")
    if header.get("format") != FORMAT_VERSION:
        raise _bad("its header's format does not match its version")
    return Snapshot(header, _json(parts[STATE], "state"), pages)
