"""Builds one VM from a runner configuration: KVM objects, guest memory, the boot image and initial CPU state.

x86 PC layout: one RAM slot from guest physical 0, in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT, the Intel
real-mode helper pages just below 4 GiB, the CPUID table of the effective platform on every vCPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.guest.builtin import builtin_image
from kvmplat.agent.guest.image import CpuState, GuestImage
from kvmplat.agent.kvm.devices import Devices
from kvmplat.agent.kvm.fds import GuestMemory, Kvm, MpState, Vcpu, Vm
from kvmplat.agent.platform.x86 import for_vcpu
from kvmplat.agent.runner.wire import BootSource, RunnerConfig

__all__ = ["Machine", "build_machine", "load_image"]

TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000
MIB = 1 << 20


@dataclass
class Machine:
    """A built VM: its fds, memory, its devices and the console pipe's read end; `close()` frees them all."""

    kvm: Kvm
    vm: Vm
    memory: GuestMemory
    vcpus: list[Vcpu]
    devices: Devices
    console_fd: int
    image: GuestImage
    _console_w: int = field(repr=False, default=-1)

    def close(self) -> None:
        """Frees everything: vCPUs, VM, memory, devices, console pipe (idempotent)."""
        for v in self.vcpus:
            v.close()
        self.vm.close()
        self.kvm.close()
        self.devices.close()
        for fd in (self._console_w, self.console_fd):
            if fd >= 0:
                os.close(fd)
        self._console_w = self.console_fd = -1


def load_image(boot: BootSource, memory_size: int, vcpus: int, image_dirs: tuple[str, ...] | None = None) -> GuestImage:
    """The GuestImage for a boot source (built-in payload or Linux kernel)."""
    if boot.builtin:
        return builtin_image(boot.builtin, vcpus, memory_size)
    from kvmplat.agent.linux import load_linux  # only Linux guests pay for the loader

    kernel = _read(boot.kernel, "spec.boot.kernel", image_dirs)
    initrd = _read(boot.initrd, "spec.boot.initrd", image_dirs) if boot.initrd else None
    return load_linux(kernel, initrd, boot.cmdline, memory_size, vcpus)


def _read(path: str, field_name: str, image_dirs: tuple[str, ...] | None) -> bytes:
    """The file's bytes; with `image_dirs`, only if the file really opened lies inside one of them (the agent
    checked the path before, but a link swapped since then would point elsewhere)."""
    try:
        with open(path, "rb") as f:
            if image_dirs is not None:
                opened = os.readlink(f"/proc/self/fd/{f.fileno()}")
                if not any(os.path.commonpath([opened, d]) == d for d in image_dirs):
                    raise InvalidArgument.field(field_name, f"{path} now leads outside the image directories")
            return f.read()
    except OSError as e:
        raise InvalidArgument.field(field_name, f"cannot read {path}: {e.strerror}") from None


def build_machine(config: RunnerConfig) -> Machine:
    """Creates the VM described by `config` (vcpus, memory, boot, CPUID rows); nothing runs yet."""
    memory_size = config.memory_mib * MIB
    if config.incoming:  # memory and CPU state come from a snapshot or a migration, not from a boot image
        image = GuestImage(segments=(), bsp=CpuState(), ap=None, description=config.incoming)
    else:
        image = load_image(config.boot, memory_size, config.vcpus, config.image_dirs)
    kvm = Kvm()
    vm = kvm.create_vm()
    machine: Machine | None = None
    try:
        vm.set_tss_addr(TSS_ADDR)
        vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        # memory before the irqchip: a memslot added after it waits out an SRCU grace period (~8 ms measured here)
        memory = vm.add_memory(memory_size)
        vm.create_irqchip()
        vm.create_pit2()
        for seg in image.segments:
            memory.write(seg.gpa, seg.data)
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            devices = Devices(vm.fd, w)
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        machine = Machine(kvm, vm, memory, [], devices, r, image, w)
        for i in range(config.vcpus):
            machine.vcpus.append(_make_vcpu(vm, i, image, config.cpuid))
    except BaseException:
        if machine is not None:
            machine.close()
        vm.close()
        kvm.close()
        raise
    return machine


def _make_vcpu(vm: Vm, index: int, image: GuestImage, cpuid: tuple[tuple[int, ...], ...] | None) -> Vcpu:
    vcpu = vm.create_vcpu(index)
    rows = list(cpuid) if cpuid is not None else vm.kvm.get_supported_cpuid()
    vcpu.set_cpuid2(for_vcpu(rows, index))
    state = image.bsp if index == 0 else image.ap
    if state is not None:
        apply_cpu_state(vcpu, state)
        if image.vcpu_index_reg:
            regs = vcpu.get_regs()
            setattr(regs, image.vcpu_index_reg, index)
            vcpu.set_regs(regs)
        if index:
            vcpu.set_mp_state(MpState.RUNNABLE)
    return vcpu


def apply_cpu_state(vcpu: Vcpu, state: CpuState) -> None:
    """Writes a CpuState into the vCPU's sregs and regs (fields not named keep KVM's reset values)."""
    sregs = vcpu.get_sregs()
    for name, seg in state.segments.items():
        dst = getattr(sregs, name)
        for f in ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g"):
            setattr(dst, f, getattr(seg, f))
    for name, value in state.control.items():
        setattr(sregs, name, value)
    for table, dt in (("gdt", state.gdt), ("idt", state.idt)):
        if dt is not None:
            getattr(sregs, table).base, getattr(sregs, table).limit = dt
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    for name, value in state.regs.items():
        setattr(regs, name, value)
    vcpu.set_regs(regs)
