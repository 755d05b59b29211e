"""The C devices of the fast loop (fastloop.c), driven with synthetic kvm_run port exits: no guest, no threads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from kvmplat.agent.kvm._kvmc import ffi
from kvmplat.agent.kvm.devices import Devices, FastExit, VcpuStats


class Dev:
    """A device state with a console pipe, and a kvm_run buffer to fake exits in."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.devices = Devices(-1, self.w, irqchip=False)
        self.buf = ffi.new("uint8_t[8192]")
        self.run: Any = ffi.cast("struct kvm_run *", self.buf)
        self.stats = VcpuStats()

    def io(self, port: int, value: int | None = None, size: int = 1) -> tuple[int, int]:
        """One port access (write when value is given); returns (handler result, byte read)."""
        self.run.exit_reason = 2
        self.run.io.direction = 0 if value is None else 1
        self.run.io.size, self.run.io.port, self.run.io.count, self.run.io.data_offset = size, port, 1, 4096
        if value is not None:
            self.buf[4096] = value
        r = self.devices.handle_pio(self.run, self.stats)
        return r, self.buf[4096]

    def console(self) -> bytes:
        self.devices.flush_console()
        try:
            return os.read(self.r, 65536)
        except BlockingIOError:
            return b""


@pytest.fixture
def dev() -> Iterator[Dev]:
    d = Dev()
    yield d
    d.devices.close()
    os.close(d.r)
    os.close(d.w)


def test_uart_lines_reach_the_console(dev: Dev) -> None:
    for c in b"hi\n":
        assert dev.io(0x3F8, c) == (0, c)
    assert os.read(dev.r, 100) == b"hi\n"  # a newline flushes at once
    dev.io(0x3F8, ord(">"))
    assert dev.console() == b">"  # a partial line waits for an explicit flush
    assert dev.stats.counters()["console_bytes"] == 4


def test_uart_registers_as_the_8250_driver_expects(dev: Dev) -> None:
    assert dev.io(0x3FD)[1] == 0x60  # LSR: THRE | TEMT, nothing received
    dev.io(0x3F9, 0xFF)
    assert dev.io(0x3F9)[1] == 0x0F  # IER reads back its low four bits
    assert dev.io(0x3FA)[1] & 0x0F == 0x02  # THRE interrupt pending once enabled ...
    assert dev.io(0x3FA)[1] & 0x0F == 0x01  # ... and acknowledged by reading IIR
    dev.io(0x3FB, 0x80)  # DLAB: divisor latch instead of THR/IER
    dev.io(0x3F8, 0x01)
    assert dev.io(0x3F8)[1] == 0x01 and dev.console() == b""


def test_input_is_queued_for_the_guest(dev: Dev) -> None:
    assert dev.devices.console_input(b"ls\n") == 3
    assert dev.io(0x3FD)[1] & 0x01  # data ready
    assert bytes(dev.io(0x3F8)[1] for _ in range(3)) == b"ls\n"
    assert not dev.io(0x3FD)[1] & 0x01


def test_exit_port_reset_line_and_unknown_ports(dev: Dev) -> None:
    assert dev.io(0xF4, 0)[0] == FastExit.POWEROFF
    assert dev.io(0x64, 0xFE)[0] == FastExit.RESET
    assert dev.io(0x64) == (0, 0x01)  # i8042 never busy (IBF clear); OBF set: Linux finds no controller at once
    assert dev.io(0x60) == (0, 0)
    assert dev.io(0x80, 0x12)[0] == 0 and dev.stats.counters()["unhandled_pio"] == 0
    assert dev.io(0x1234) == (0, 0xFF)
    dev.io(0x1234, 1)
    assert dev.stats.counters()["unhandled_pio"] == 2


def _cmos(dev: Dev, reg: int) -> int:
    dev.io(0x70, reg)
    return dev.io(0x71)[1]


def _bcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0xF)


def test_cmos_rtc_tells_the_host_utc_date_and_is_never_updating(dev: Dev) -> None:
    import time

    before = time.gmtime()
    year, month, day = (_bcd(_cmos(dev, r)) for r in (0x09, 0x08, 0x07))
    century, hour = _bcd(_cmos(dev, 0x32)), _bcd(_cmos(dev, 0x04))
    after = time.gmtime()
    assert (century * 100 + year, month, day) in {tuple(t[:3]) for t in (before, after)}
    assert hour in {before.tm_hour, after.tm_hour}
    assert _cmos(dev, 0x0A) & 0x80 == 0  # UIP never set: Linux's rtc_cmos does not poll for a second
    assert _cmos(dev, 0x0B) == 0x02  # 24-hour, BCD
    assert _cmos(dev, 0x0D) == 0x80  # valid RAM and time
    assert dev.stats.counters()["unhandled_pio"] == 0


def test_cmos_rtc_binary_mode_ram_and_dropped_clock_writes(dev: Dev) -> None:
    import time

    dev.io(0x70, 0x0B)
    dev.io(0x71, 0x04 | 0x10)  # binary mode, and an update interrupt it will not raise
    assert _cmos(dev, 0x0B) == 0x06
    assert _cmos(dev, 0x09) in {time.gmtime().tm_year % 100, (time.gmtime().tm_year + 1) % 100}
    dev.io(0x70, 0x40)
    dev.io(0x71, 0x5A)
    assert _cmos(dev, 0x40) == 0x5A  # CMOS RAM keeps what the guest wrote
    dev.io(0x70, 0x09)
    dev.io(0x71, 0x99)
    assert _cmos(dev, 0x09) != 0x99  # the year is the host's
    assert dev.io(0x70)[1] == 0xFF  # the index port is write-only
