"""The KVM layer on the real /dev/kvm: one object per fd, errors naming the ioctl, idempotent close."""

from __future__ import annotations

import errno
import os

import pytest
from kvmplat.agent.errors import KvmError, Unavailable
from kvmplat.agent.guest.builtin import LOAD_ADDR, builtin_image
from kvmplat.agent.kvm import fds
from kvmplat.agent.kvm.fds import ExitReason, Kvm, MpState
from kvmplat.agent.kvm.ioctls import Cap
from kvmplat.agent.runner.machine import apply_cpu_state

pytestmark = pytest.mark.kvm


def _fds() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if fd.isdigit() and _ok(fd)}


def _ok(fd: str) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return True


def test_api_version_and_capabilities() -> None:
    with Kvm() as kvm:
        assert kvm.get_api_version() == 12
        assert kvm.check_extension(Cap.USER_MEMORY) == 1
        assert kvm.check_extension(Cap.MAX_VCPUS) >= kvm.check_extension(Cap.NR_VCPUS) >= 1
        assert kvm.get_vcpu_mmap_size() >= 4096


def test_supported_cpuid_grows_its_buffer_past_e2big(monkeypatch: pytest.MonkeyPatch) -> None:
    with Kvm() as kvm:
        whole = kvm.get_supported_cpuid()
        monkeypatch.setattr(fds, "CPUID_FIRST_ENTRIES", 1)  # every host has more leaves: E2BIG until it grows
        grown = kvm.get_supported_cpuid()
    assert len(whole) > 1 and {0, 1} <= {r[0] for r in whole}
    assert grown == whole


def test_children_close_their_fds() -> None:
    before = _fds()
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.add_memory(1 << 20)
    vcpu = vm.create_vcpu(0)
    assert "anon_inode:kvm-vcpu:0" in _fds()
    for obj in (vcpu, vm, kvm):
        obj.close()
        obj.close()  # idempotent
    assert _fds() == before


def test_errors_name_the_ioctl_fd_kind_and_errno() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_vcpu(0).close()
        with pytest.raises(KvmError) as info:
            vm.create_vcpu(0)  # a vCPU id can be created once
        assert info.value.ioctl == "KVM_CREATE_VCPU" and info.value.fd_kind == "vm"
        assert info.value.errno == errno.EEXIST and "EEXIST" in str(info.value)
    with pytest.raises(KvmError, match=r"KVM_RUN on vcpu fd failed.*closed"):
        vcpu = Kvm().create_vm().create_vcpu(0)
        vcpu.close()
        vcpu.run()


def test_missing_device_is_unavailable_with_a_hint() -> None:
    with pytest.raises(Unavailable, match="kvm module"):
        Kvm("/nonexistent/kvm")


def test_a_real_mode_guest_writes_its_console_port() -> None:
    image = builtin_image("probe", 1)
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        mem = vm.add_memory(1 << 20)
        for seg in image.segments:
            mem.write(seg.gpa, seg.data)
        assert mem.read(LOAD_ADDR, 4) == image.segments[0].data[:4]
        with vm.create_vcpu(0) as vcpu:
            vcpu.set_cpuid2(kvm.get_supported_cpuid())
            apply_cpu_state(vcpu, image.bsp)
            assert vcpu.get_mp_state() is MpState.RUNNABLE
            assert vcpu.run() is ExitReason.IO
            io = vcpu.run_struct.io
            assert (io.direction, io.port, io.size) == (1, 0x3F8, 1)
