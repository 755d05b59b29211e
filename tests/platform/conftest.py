"""Fixtures for platform tests: the measured host truth and a driver that runs the built-in probe payload.

The driver builds the runner's machine for the built-in probe and runs it with the C vCPU loop, which writes console
bytes to a pipe.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Iterator

import pytest

CpuidLines = dict[tuple[int, int], tuple[int, int, int, int]]
LINE = re.compile(r"cpuid ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8})")


def parse_cpuid_lines(text: str) -> CpuidLines:
    """The probe's `cpuid LEAF SUB EAX EBX ECX EDX` lines by (leaf, subleaf)."""
    out: CpuidLines = {}
    for m in LINE.finditer(text):
        out[(int(m[1], 16), int(m[2], 16))] = (int(m[3], 16), int(m[4], 16), int(m[5], 16), int(m[6], 16))
    return out


def _run_probe(rows: list[tuple[int, ...]], vcpus: int = 1, timeout: float = 20.0) -> str:
    """Console output of the probe payload run on `vcpus` vCPUs, each with `rows` adjusted by for_vcpu: the machine
    the runner builds (runner/machine.py), driven by the C vCPU loop on one thread per vCPU."""
    from kvmplat.agent.kvm.devices import VcpuStats
    from kvmplat.agent.runner.machine import build_machine
    from kvmplat.agent.runner.wire import BootSource, RunnerConfig

    config = RunnerConfig("probe", vcpus, 1, boot=BootSource(builtin="probe"), cpuid=tuple(rows))
    m = build_machine(config)
    try:
        signal.signal(signal.SIGUSR1, lambda *_: None)
        threads = [threading.Thread(target=m.devices.run, args=(c, VcpuStats())) for c in m.vcpus]
        for t in threads:
            t.start()
        threads[-1].join(timeout)  # the last vCPU prints last and powers off; the others park in hlt
        for c, t in zip(m.vcpus, threads, strict=True):
            if t.is_alive():
                c.run_struct.immediate_exit = 1
                signal.pthread_kill(t.ident or 0, signal.SIGUSR1)
            t.join(5)
        m.devices.flush_console()
        os.set_blocking(m.console_fd, False)
        try:
            return os.read(m.console_fd, 1 << 16).decode(errors="replace")
        except BlockingIOError:
            return ""
    finally:
        m.close()


@pytest.fixture(scope="session")
def host_truth() -> Iterator[object]:
    """This host's measured truth (probe guests, not the cache)."""
    from kvmplat.agent.kvm.fds import Kvm
    from kvmplat.agent.platform.hostprobe import probe_host

    with Kvm() as kvm:
        yield probe_host(kvm)


@pytest.fixture(scope="session")
def probe_guest() -> Callable[..., str]:
    """Runs the probe payload under a CPUID table and returns its console output (memoised per table)."""
    seen: dict[tuple[object, ...], str] = {}

    def probe(rows: list[tuple[int, ...]], vcpus: int = 1) -> str:
        key = (tuple(rows), vcpus)
        if key not in seen:
            seen[key] = _run_probe(rows, vcpus)
        return seen[key]

    return probe
