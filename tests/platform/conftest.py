"""Fixtures for platform tests: the measured host truth and a driver that runs the built-in probe payload.

The driver follows the runner's recipe (payload blob at 0x1000, vCPU count at 0x500, rip = 0x1000 + entry, rbx = vCPU
index, flat real-mode segments, in-kernel irqchip) and the C vCPU loop, which writes console bytes to a pipe.
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
    """Console output of the probe payload run on `vcpus` vCPUs, each with `rows` adjusted by for_vcpu."""
    from kvmplat.agent.kvm._kvmc import ffi, lib
    from kvmplat.agent.kvm.fds import Kvm, MpState
    from kvmplat.agent.kvm.ioctls import REQUESTS
    from kvmplat.agent.platform.x86 import for_vcpu

    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.set_tss_addr(0xFFFBD000)
        vm.create_irqchip()
        mem = vm.add_memory(1 << 20)
        mem.write(0x1000, bytes(ffi.buffer(lib.kp_payload_blob, lib.kp_payload_blob_size)))
        mem.write(0x500, bytes([vcpus]))
        r, w = os.pipe()
        kv = lib.kp_vm_new(vm.fd, w, 1, REQUESTS["KVM_RUN"], REQUESTS["KVM_IRQ_LINE"])
        cpus = [vm.create_vcpu(i) for i in range(vcpus)]
        try:
            for c in cpus:
                c.set_cpuid2(for_vcpu(rows, c.index))
                s = c.get_sregs()
                for seg in (s.cs, s.ds, s.es, s.fs, s.gs, s.ss):
                    seg.base, seg.selector = 0, 0
                c.set_sregs(s)
                regs = c.get_regs()
                regs.rip, regs.rflags, regs.rbx = 0x1000 + lib.kp_entry_probe, 2, c.index
                c.set_regs(regs)
                if c.index:
                    c.set_mp_state(MpState.RUNNABLE)
            _run_all(lib, ffi, kv, cpus, timeout)
            lib.kp_vm_flush_console(kv)
            os.close(w)
            w = -1
            return os.read(r, 1 << 16).decode(errors="replace")
        finally:
            for c in cpus:
                c.close()
            lib.kp_vm_free(kv)
            os.close(r)
            if w >= 0:
                os.close(w)


def _run_all(lib: object, ffi: object, kv: object, cpus: list, timeout: float) -> None:  # type: ignore[type-arg]
    """Runs every vCPU on its own thread until the payload powers off; kicks them after `timeout` seconds."""
    signal.signal(signal.SIGUSR1, lambda *_: None)

    def run(c: object) -> None:
        lib.kp_run(kv, c.fd, c.run_struct, ffi.new("struct kp_vcpu_stats *"))  # type: ignore[attr-defined]

    threads = [threading.Thread(target=run, args=(c,)) for c in cpus]
    for t in threads:
        t.start()
    threads[-1].join(timeout)  # the last vCPU prints last and powers off; the others park in hlt
    for c, t in zip(cpus, threads, strict=True):
        if t.is_alive():
            c.run_struct.immediate_exit = 1
            signal.pthread_kill(t.ident or 0, signal.SIGUSR1)
        t.join(5)


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
