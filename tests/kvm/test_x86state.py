"""Get and set of every vCPU and VM state a snapshot or migration needs, and dirty-page logging, on the real KVM."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from kvmplat.agent.guest.image import CpuState, SegmentReg
from kvmplat.agent.kvm.fds import ExitReason, Kvm, Vcpu, Vm
from kvmplat.agent.kvm.ioctls import X86_64
from kvmplat.agent.kvm.x86state import IOAPIC, PIC_MASTER, PIC_SLAVE, as_bytes
from kvmplat.agent.runner.machine import apply_cpu_state

NEW_IOCTLS = [
    "KVM_GET_MSR_INDEX_LIST",
    "KVM_GET_DIRTY_LOG",
    "KVM_GET_IRQCHIP",
    "KVM_SET_IRQCHIP",
    "KVM_SET_CLOCK",
    "KVM_GET_CLOCK",
    "KVM_GET_MSRS",
    "KVM_SET_MSRS",
    "KVM_GET_FPU",
    "KVM_SET_FPU",
    "KVM_GET_LAPIC",
    "KVM_SET_LAPIC",
    "KVM_GET_PIT2",
    "KVM_SET_PIT2",
    "KVM_GET_VCPU_EVENTS",
    "KVM_SET_VCPU_EVENTS",
    "KVM_GET_DEBUGREGS",
    "KVM_SET_DEBUGREGS",
    "KVM_GET_XSAVE",
    "KVM_SET_XSAVE",
    "KVM_GET_XCRS",
    "KVM_SET_XCRS",
]
MSR_IA32_TSC = 0x10
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
MSR_KVM_WALL_CLOCK_NEW = 0x4B564D00
# real mode at 0x1000: mov byte [0x8000], 1; mov byte [0x9000], 1; out 0xf4, al
WRITER = bytes.fromhex("c606008001c606009001e6f4")


@pytest.mark.skipif(not shutil.which("gcc") or not Path("/usr/include/linux/kvm.h").exists(), reason="needs gcc")
def test_request_numbers_match_the_kernel_header(tmp_path: Path) -> None:
    src = tmp_path / "req.c"
    body = "\n".join(f'printf("%lu\\n", (unsigned long){n});' for n in NEW_IOCTLS)
    src.write_text(f"#include <stdio.h>\n#include <linux/kvm.h>\nint main(void){{\n{body}\nreturn 0;}}\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "req"), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "req")], check=True, capture_output=True, text=True).stdout.split()
    assert {n: X86_64[n] for n in NEW_IOCTLS} == dict(zip(NEW_IOCTLS, map(int, out), strict=True))


def _vm(kvm: Kvm, irqchip: bool = True) -> tuple[Vm, Vcpu]:
    vm = kvm.create_vm()
    vm.set_tss_addr(0xFFFBD000)
    vm.add_memory(4 << 20)
    if irqchip:
        vm.create_irqchip()
        vm.create_pit2()
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid2(kvm.get_supported_cpuid())
    return vm, vcpu


@pytest.mark.kvm
def test_msr_index_list_names_tsc_and_kvmclock() -> None:
    with Kvm() as kvm:
        msrs = kvm.get_msr_index_list()
    assert {MSR_IA32_TSC, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW} <= set(msrs)


@pytest.mark.kvm
def test_every_vcpu_state_goes_from_one_vcpu_to_another() -> None:
    with Kvm() as kvm:
        vm1, a = _vm(kvm)
        vm2, b = _vm(kvm)
        regs = a.get_regs()
        regs.rax, regs.rip = 0x1234, 0x2000
        a.set_regs(regs)
        a.set_msrs([(MSR_IA32_TSC, 1 << 40)])
        for name in ("fpu", "xsave", "xcrs", "lapic", "vcpu_events", "debugregs"):
            getattr(b, f"set_{name}")(as_bytes(getattr(a, f"get_{name}")()))
            assert as_bytes(getattr(b, f"get_{name}")()) == as_bytes(getattr(a, f"get_{name}")()), name
        b.set_regs(as_bytes(a.get_regs()))
        assert (b.get_regs().rax, b.get_regs().rip) == (0x1234, 0x2000)
        msrs = a.get_msrs(kvm.get_msr_index_list())
        assert b.set_msrs(msrs) == []
        assert dict(b.get_msrs([MSR_IA32_TSC]))[MSR_IA32_TSC] >= 1 << 40  # the TSC runs on from the value set
        vm1.close()
        vm2.close()


@pytest.mark.kvm
def test_irqchip_pit_and_clock_go_from_one_vm_to_another() -> None:
    with Kvm() as kvm:
        vm1, _ = _vm(kvm)
        vm2, _ = _vm(kvm)
        pit = vm1.get_pit2()
        pit.channels[0].count = 0x1234
        vm1.set_pit2(pit)
        for chip in (PIC_MASTER, PIC_SLAVE, IOAPIC):
            vm2.set_irqchip(as_bytes(vm1.get_irqchip(chip)))
            assert as_bytes(vm2.get_irqchip(chip)) == as_bytes(vm1.get_irqchip(chip))
        vm2.set_pit2(as_bytes(vm1.get_pit2()))
        assert vm2.get_pit2().channels[0].count == 0x1234
        clock = vm1.get_clock()
        clock.clock += 10**12
        vm2.set_clock(clock)
        assert vm2.get_clock().clock >= 10**12
        vm1.close()
        vm2.close()


@pytest.mark.kvm
def test_dirty_log_reports_exactly_the_pages_the_guest_wrote() -> None:
    with Kvm() as kvm:
        vm, vcpu = _vm(kvm, irqchip=False)
        mem = vm._slots[0]
        mem.write(0x1000, WRITER)
        cs = SegmentReg(type=0xB)
        apply_cpu_state(vcpu, CpuState(regs={"rip": 0x1000, "rflags": 2}, segments={"cs": cs}))
        vm.log_dirty_pages(True)
        assert vcpu.run() is ExitReason.IO
        words = struct.unpack(f"{mem.pages // 64}Q", vm.get_dirty_log(0, mem.pages))
        dirty = [i * 64 + b for i, w in enumerate(words) for b in range(64) if w >> b & 1]
        assert dirty == [8, 9]
        assert not any(struct.unpack(f"{mem.pages // 64}Q", vm.get_dirty_log(0, mem.pages)))  # read clears it
        vm.log_dirty_pages(False)
        vm.close()
