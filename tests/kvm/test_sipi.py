"""An AP woken from wait-for-SIPI runs (X86_LAB.md): hardware KVM returns EAGAIN from the AP's KVM_RUN once when
INIT/SIPI wake it, and the caller must run it again. Both run paths do: Vcpu.run() and the C fast loop (kp_run).

The BSP (real mode, DS based at the local APIC) sends INIT then SIPI (vector 2: the AP starts at 0x2000) to APIC 1
through the xAPIC's ICR, as Linux does, then writes the exit port; the AP, created beside it and parked by KVM in
wait-for-SIPI, writes the exit port too. kvm_pvm may never return EAGAIN here; the x86 lab's kvm-amd does, and runs
this file (lab/x86/inside.py).
"""

from __future__ import annotations

import os
import signal
import struct
import threading
from collections.abc import Callable

import pytest
from kvmplat.agent.kvm._kvmc import ffi, lib
from kvmplat.agent.kvm.fds import ExitReason, Kvm, MpState, Vcpu, Vm
from kvmplat.agent.kvm.ioctls import REQUESTS

pytestmark = pytest.mark.kvm

EXIT_PORT = 0xF4
KP_EXIT_POWEROFF = 1000
SIPI_VECTOR = 2  # the AP starts in real mode at SIPI_VECTOR * 0x1000


def _apic_write(offset: int, value: int) -> bytes:
    """mov eax, value; mov [offset], eax (16-bit code; DS is based at the local APIC)."""
    return b"\x66\xb8" + struct.pack("<I", value) + b"\x66\xa3" + struct.pack("<H", offset)


APIC_BASE = 0xFEE00000
BSP_CODE = (
    _apic_write(0xF0, 0x1FF)  # spurious-interrupt vector register: APIC software-enabled, as Linux does first
    + _apic_write(0x310, 1 << 24)  # ICR high: destination APIC 1
    + _apic_write(0x300, 0x4500)  # ICR low: INIT, level assert
    + _apic_write(0x300, 0x4600 | SIPI_VECTOR)  # ICR low: start-up IPI
    + bytes.fromhex("b001 e6f4 f4")  # mov al, 1; out 0xf4, al; hlt
)
AP_CODE = bytes.fromhex("b002 e6f4 f4")  # mov al, 2; out 0xf4, al; hlt


def _real_mode(vcpu: Vcpu, rip: int) -> None:
    sregs = vcpu.get_sregs()
    for seg in (sregs.cs, sregs.es, sregs.ss):
        seg.base, seg.selector = 0, 0
    sregs.ds.base = APIC_BASE  # a real-mode segment based where the xAPIC's registers are (set from outside)
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rflags = rip, 0x2
    vcpu.set_regs(regs)


Runner = Callable[[Vcpu], object]


def _with_ap_waiting(runner: Callable[[Vm], Runner]) -> tuple[object, object]:
    """Runs the AP (parked in wait-for-SIPI) on a thread and the BSP here, each with runner(vm); returns (bsp
    result, (ap result, exit port, byte written) or the AP's exception)."""
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.set_tss_addr(0xFFFBD000)
        vm.create_irqchip()
        mem = vm.add_memory(1 << 20)
        mem.write(0x1000, BSP_CODE)
        mem.write(SIPI_VECTOR * 0x1000, AP_CODE)
        rows = kvm.get_supported_cpuid()
        with vm.create_vcpu(0) as bsp, vm.create_vcpu(1) as ap:
            bsp.set_cpuid2(rows)
            ap.set_cpuid2(rows)
            _real_mode(bsp, 0x1000)
            assert ap.get_mp_state() is MpState.UNINITIALIZED
            run = runner(vm)
            result: list[object] = []
            signal.signal(signal.SIGUSR1, lambda *_: None)
            thread = threading.Thread(target=lambda: result.append(_catch(run, ap)), daemon=True)
            thread.start()
            done = run(bsp)
            thread.join(10.0)
            if thread.is_alive():  # the AP never woke: kick it out so the test ends
                ap.run_struct.immediate_exit = 1
                signal.pthread_kill(thread.ident or 0, signal.SIGUSR1)
                thread.join(5.0)
            return done, (result or ["AP still in KVM_RUN after 10 s"])[0]


def _catch(fn: Callable[[Vcpu], object], vcpu: Vcpu) -> object:
    try:
        out = fn(vcpu)
    except Exception as e:  # the failure is the result the test reports
        return e
    return out, int(vcpu.run_struct.io.port), _io_byte(vcpu)


def _io_byte(vcpu: Vcpu) -> int:
    run = vcpu.run_struct
    return int(ffi.cast("uint8_t *", run)[run.io.data_offset])


def test_python_run_path_runs_a_woken_ap_again() -> None:
    bsp, ap = _with_ap_waiting(lambda _vm: lambda v: v.run())
    assert bsp is ExitReason.IO
    assert ap == (ExitReason.IO, EXIT_PORT, 2), ap


def test_fast_loop_runs_a_woken_ap_again() -> None:
    r, w = os.pipe()
    made: list[object] = []

    def runner(vm: Vm) -> Runner:
        kv = lib.kp_vm_new(vm.fd, w, 1, REQUESTS["KVM_RUN"], REQUESTS["KVM_IRQ_LINE"])
        made.append(kv)
        return lambda v: lib.kp_run(kv, v.fd, v.run_struct, ffi.new("struct kp_vcpu_stats *"))

    try:
        bsp, ap = _with_ap_waiting(runner)
    finally:
        for kv in made:
            lib.kp_vm_free(kv)
        os.close(r)
        os.close(w)
    assert bsp == KP_EXIT_POWEROFF
    assert ap == (KP_EXIT_POWEROFF, EXIT_PORT, 2), ap
