"""Reads a VM's console pipe (filled by the C UART) and hands out whole lines; a partial line (a prompt) is handed
out once the guest has been quiet for a moment, so interactive consoles see it.

A quiet console costs no wakeups: once nothing is left to hand out, the reader blocks without a timeout, and the
UART signals an eventfd at the guest's next byte, so a partial line still goes out after the quiet time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import threading
from collections.abc import Callable

from kvmplat.agent.kvm.devices import Devices
from kvmplat.agent.runner import workers

__all__ = ["ConsoleReader"]

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
QUIET_S = 0.2
LINE_MAX = 4096  # bytes of one console event: a longer line goes out in pieces


class ConsoleReader:
    """A thread turning console bytes into text events."""

    def __init__(self, fd: int, devices: Devices | None, emit: Callable[[str], None]) -> None:
        self._fd = fd
        self._devices = devices  # None: a pipe with no UART behind it
        self._emit = emit
        self._stop = threading.Event()
        self._pending = b""
        # stop() writes here to wake the select at once instead of after QUIET_S (it cost every stop 200 ms)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._bytes_again = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)  # the UART's signal to an idle reader
        with contextlib.suppress(OSError):  # a larger pipe holds a kernel's boot log between two reads
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        self._thread = workers.start(self._main, "console")

    @property
    def stopped(self) -> bool:
        """Whether stop() was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Delivers what is left and ends the thread."""
        if self._stop.is_set():
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(2.0)
        if not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w, self._bytes_again):
                os.close(fd)

    def _main(self) -> None:
        timeout: float | None = QUIET_S
        while True:
            ready, _, _ = select.select([self._fd, self._wake_r, self._bytes_again], [], [], timeout)
            if self._fd in ready:
                self._feed(os.read(self._fd, 65536))
                timeout = QUIET_S
                continue
            if self._bytes_again in ready:
                os.eventfd_read(self._bytes_again)
                timeout = QUIET_S
                continue
            # quiet, or stopping (the wake pipe stays readable): push out what the UART still buffers, then any
            # partial line
            if self._devices is not None and self._devices.flush_console():
                continue
            if self._pending:
                self._emit(self._pending.decode(errors="replace"))
                self._pending = b""
            if self._stop.is_set():
                return
            if self._devices is not None and not self._devices.console_idle(self._bytes_again):
                timeout = None  # nothing left anywhere: sleep until the guest writes or stop() wakes us

    def _feed(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()  # what follows the last newline: a partial line
        for line in lines:
            line = self._emit_long(line)
            self._emit(line.decode(errors="replace") + "\n")
        # a guest writing without newlines must not grow the buffer (nor one event) without bound
        self._pending = self._emit_long(self._pending)

    def _emit_long(self, data: bytes) -> bytes:
        """Hands out LINE_MAX pieces of an overlong line (cut between UTF-8 characters); returns the rest."""
        while len(data) > LINE_MAX:
            cut = LINE_MAX
            while cut > LINE_MAX - 3 and data[cut] & 0xC0 == 0x80:  # not inside a character
                cut -= 1
            self._emit(data[:cut].decode(errors="replace"))
            data = data[cut:]
        return data
