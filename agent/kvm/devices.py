"""The C side of one VM (fastloop.c's `kp_vm`): the UART, i8042 and exit ports, and the vCPU fast loop over them.

    Devices(vm_fd, console_fd)   owns the kp_vm state; .run(vcpu, stats) is one trip through the fast loop
    VcpuStats                    one vCPU's exit counters, written by the fast loop
    FastExit                     what the fast loop returns besides a KVM exit reason (fastloop.c KP_EXIT_*)

The exit codes are fastloop.c's #defines, read through cffi: C holds the one definition. `close()` frees the state
once; after it every call is a HostError rather than a use after free.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from kvmplat.agent.errors import HostError
from kvmplat.agent.kvm._kvmc import ffi, lib
from kvmplat.agent.kvm.ioctls import REQUESTS

if TYPE_CHECKING:
    from kvmplat.agent.kvm.fds import Vcpu

__all__ = ["Devices", "FastExit", "VcpuStats"]


class FastExit(enum.IntEnum):
    """The fast loop's own return codes (fastloop.c KP_EXIT_*); any other value is a KVM exit left to Python."""

    EINTR = lib.KP_EXIT_EINTR  # KVM_RUN was interrupted: a kick
    POWEROFF = lib.KP_EXIT_POWEROFF  # the guest wrote the kvmplat exit port
    RESET = lib.KP_EXIT_RESET  # the guest pulsed the i8042 reset line
    SLOW = lib.KP_EXIT_SLOW  # an exit the fast path does not handle: details in kvm_run


class VcpuStats:
    """One vCPU's exit counters (struct kp_vcpu_stats), written by the fast loop while the vCPU runs."""

    REASONS = 64

    def __init__(self) -> None:
        self.c: Any = ffi.new("struct kp_vcpu_stats *")

    def counters(self) -> dict[str, int]:
        """exits, unhandled_pio, unhandled_mmio and console_bytes."""
        return {k: int(getattr(self.c, k)) for k in ("exits", "unhandled_pio", "unhandled_mmio", "console_bytes")}

    def by_reason(self) -> dict[int, int]:
        """Exits counted per KVM exit reason (the non-zero ones)."""
        return {i: int(n) for i in range(self.REASONS) if (n := self.c.by_reason[i])}


class Devices:
    """The device state of one VM, owned by whoever built the VM; freed once by `close()`."""

    def __init__(self, vm_fd: int, console_fd: int, irqchip: bool = True) -> None:
        self._vm: Any = lib.kp_vm_new(vm_fd, console_fd, int(irqchip), REQUESTS["KVM_RUN"], REQUESTS["KVM_IRQ_LINE"])
        if self._vm == ffi.NULL:
            raise HostError("out of memory for the VM's device state")

    @property
    def closed(self) -> bool:
        """True once freed."""
        return self._vm is None

    def _state(self) -> Any:
        if self._vm is None:
            raise HostError("the VM's device state is freed")
        return self._vm

    def run(self, vcpu: Vcpu, stats: VcpuStats) -> int:
        """KVM_RUN until an exit the fast path does not absorb: a FastExit code, or -errno of KVM_RUN."""
        return int(lib.kp_run(self._state(), vcpu.fd, vcpu.run_struct, stats.c))

    def handle_pio(self, run: Any, stats: VcpuStats) -> int:
        """The port exit in `run` (a struct kvm_run) through the devices: 0, POWEROFF or RESET."""
        return int(lib.kp_handle_pio(self._state(), run, stats.c))

    def flush_console(self) -> bool:
        """Pushes what the UART still buffers into the console pipe; True when there was something."""
        return bool(lib.kp_vm_flush_console(self._state()))

    def console_idle(self, wake_fd: int) -> bool:
        """Goes idle: False when nothing was buffered (the UART then signals the eventfd `wake_fd` at the guest's
        next byte), True when a partial line was (flushed now)."""
        return bool(lib.kp_vm_console_idle(self._state(), wake_fd))

    def first_console_ns(self) -> int:
        """Wall-clock nanoseconds of the guest's first console byte (0: none yet)."""
        return int(lib.kp_vm_first_console_ns(self._state()))

    def console_input(self, data: bytes) -> int:
        """Bytes typed at the UART; how many it took."""
        return int(lib.kp_vm_console_input(self._state(), data, len(data)))

    def save(self) -> bytes:
        """The devices' state (struct kp_dev_state: UART registers, its unsent partial line and unread input)."""
        dev = ffi.new("struct kp_dev_state *")
        lib.kp_vm_save_devices(self._state(), dev)
        return bytes(ffi.buffer(dev))

    def load(self, data: bytes) -> bool:
        """Restores a state `save` gave; False when its version is one this build cannot load (ValueError when its
        size is not a kp_dev_state's)."""
        dev = ffi.new("struct kp_dev_state *")
        if len(data) != ffi.sizeof(dev[0]):
            raise ValueError(f"device state of {len(data)} bytes, not {ffi.sizeof(dev[0])}")
        ffi.memmove(dev, data, len(data))
        return bool(lib.kp_vm_load_devices(self._state(), dev) == 0)

    def close(self) -> None:
        """Frees the device state (idempotent); no vCPU may be running through it."""
        if self._vm is not None:
            vm, self._vm = self._vm, None
            lib.kp_vm_free(vm)
