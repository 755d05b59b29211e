"""Get and set of every x86 vCPU and VM state a snapshot or a migration needs, one method per ioctl.

Mixed into fds.Vcpu, fds.Vm and fds.Kvm (one object per fd stays true: these are their methods, kept here so that
fds.py stays small). Each getter returns the kernel struct as cffi cdata; each setter takes that cdata or the
struct's raw bytes (as a snapshot stores them), so a state read on one host is written back unchanged on another.
"""

from __future__ import annotations

import errno
from typing import Any

from kvmplat.agent.errors import KvmError
from kvmplat.agent.kvm._kvmc import ffi

__all__ = [
    "IOAPIC",
    "KVM_CLOCK_REALTIME",
    "KVM_MEM_LOG_DIRTY_PAGES",
    "MSR_BATCH",
    "PIC_MASTER",
    "PIC_SLAVE",
    "KvmState",
    "VcpuState",
    "VmState",
    "as_bytes",
]

KVM_MEM_LOG_DIRTY_PAGES = 1
KVM_CLOCK_REALTIME = 1 << 2
PIC_MASTER, PIC_SLAVE, IOAPIC = 0, 1, 2
MSR_BATCH = 1024  # at most this many MSRs per KVM_GET_MSRS / KVM_SET_MSRS (the kernel's own limit is 4096)


def as_bytes(cdata: Any) -> bytes:
    """The raw bytes of a cffi struct pointer (what a snapshot stores)."""
    return bytes(ffi.buffer(cdata))


def _struct(ctype: str, value: Any) -> Any:
    """`value` as a `ctype *`: cdata passes through, bytes are copied into a fresh struct (lengths must match)."""
    if not isinstance(value, bytes | bytearray | memoryview):
        return value
    out = ffi.new(f"{ctype} *")
    size = ffi.sizeof(ctype)
    if len(value) != size:
        raise ValueError(f"{ctype} takes {size} bytes, not {len(value)}")
    ffi.memmove(out, bytes(value), size)
    return out


class _Ioctl:
    """What the mixins need from fds._Fd."""

    def _ioctl(self, name: str, arg: Any = None, hint: str = "") -> int:
        raise NotImplementedError


class KvmState(_Ioctl):
    """System-fd state queries."""

    def get_msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs a VMM should save and restore (incl. TSC and kvmclock's)."""
        n = 256
        while True:
            raw = ffi.new(f"uint8_t[{ffi.sizeof('struct kvm_msr_list') + 4 * n}]")
            lst = ffi.cast("struct kvm_msr_list *", raw)
            lst.nmsrs = n
            try:
                self._ioctl("KVM_GET_MSR_INDEX_LIST", lst)
            except KvmError as e:
                if e.errno == errno.E2BIG and n < 65536:  # nmsrs now holds the count needed
                    n = max(int(lst.nmsrs), n * 2)
                    continue
                raise
            return [int(lst.indices[i]) for i in range(lst.nmsrs)]


class VcpuState(_Ioctl):
    """vCPU fd state get/set."""

    def _get(self, name: str, ctype: str) -> Any:
        out = ffi.new(f"{ctype} *")
        self._ioctl(name, out)
        return out

    def get_fpu(self) -> Any:
        """KVM_GET_FPU as a struct kvm_fpu."""
        return self._get("KVM_GET_FPU", "struct kvm_fpu")

    def set_fpu(self, value: Any) -> None:
        """KVM_SET_FPU from a struct kvm_fpu (cdata or bytes)."""
        self._ioctl("KVM_SET_FPU", _struct("struct kvm_fpu", value))

    def get_xsave(self) -> Any:
        """KVM_GET_XSAVE as a struct kvm_xsave (4096 bytes: FPU, SSE, AVX, ... state)."""
        return self._get("KVM_GET_XSAVE", "struct kvm_xsave")

    def set_xsave(self, value: Any) -> None:
        """KVM_SET_XSAVE from a struct kvm_xsave."""
        self._ioctl("KVM_SET_XSAVE", _struct("struct kvm_xsave", value))

    def get_xcrs(self) -> Any:
        """KVM_GET_XCRS as a struct kvm_xcrs (XCR0)."""
        return self._get("KVM_GET_XCRS", "struct kvm_xcrs")

    def set_xcrs(self, value: Any) -> None:
        """KVM_SET_XCRS from a struct kvm_xcrs."""
        self._ioctl("KVM_SET_XCRS", _struct("struct kvm_xcrs", value))

    def get_lapic(self) -> Any:
        """KVM_GET_LAPIC as a struct kvm_lapic_state (the local APIC's register page)."""
        return self._get("KVM_GET_LAPIC", "struct kvm_lapic_state")

    def set_lapic(self, value: Any) -> None:
        """KVM_SET_LAPIC from a struct kvm_lapic_state."""
        self._ioctl("KVM_SET_LAPIC", _struct("struct kvm_lapic_state", value))

    def get_vcpu_events(self) -> Any:
        """KVM_GET_VCPU_EVENTS as a struct kvm_vcpu_events (pending exceptions, interrupts, NMI, SMI)."""
        return self._get("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events")

    def set_vcpu_events(self, value: Any) -> None:
        """KVM_SET_VCPU_EVENTS from a struct kvm_vcpu_events."""
        self._ioctl("KVM_SET_VCPU_EVENTS", _struct("struct kvm_vcpu_events", value))

    def get_debugregs(self) -> Any:
        """KVM_GET_DEBUGREGS as a struct kvm_debugregs."""
        return self._get("KVM_GET_DEBUGREGS", "struct kvm_debugregs")

    def set_debugregs(self, value: Any) -> None:
        """KVM_SET_DEBUGREGS from a struct kvm_debugregs."""
        self._ioctl("KVM_SET_DEBUGREGS", _struct("struct kvm_debugregs", value))

    def get_msrs(self, indices: list[int]) -> list[tuple[int, int]]:
        """KVM_GET_MSRS: (index, value) of each MSR in `indices` the vCPU has; ones KVM cannot read are skipped."""
        out: list[tuple[int, int]] = []
        todo = list(indices)
        while todo:
            batch = todo[:MSR_BATCH]
            raw, msrs = _msrs([(i, 0) for i in batch])
            n = self._ioctl("KVM_GET_MSRS", msrs)  # the count read: the entry after them failed
            out += [(int(msrs.entries[k].index), int(msrs.entries[k].data)) for k in range(n)]
            del raw
            todo = todo[n + 1 :] if n < len(batch) else todo[len(batch) :]
        return out

    def set_msrs(self, values: list[tuple[int, int]]) -> list[int]:
        """KVM_SET_MSRS of (index, value) pairs; returns the indices KVM refused (the others are set)."""
        refused: list[int] = []
        todo = list(values)
        while todo:
            batch = todo[:MSR_BATCH]
            raw, msrs = _msrs(batch)
            n = self._ioctl("KVM_SET_MSRS", msrs)
            del raw
            if n < len(batch):
                refused.append(batch[n][0])
                todo = todo[n + 1 :]
            else:
                todo = todo[len(batch) :]
        return refused


def _msrs(values: list[tuple[int, int]]) -> tuple[Any, Any]:
    """A struct kvm_msrs of `values` and the buffer that holds it (keep both alive for the call)."""
    raw = ffi.new(f"uint8_t[{ffi.sizeof('struct kvm_msrs') + len(values) * ffi.sizeof('struct kvm_msr_entry')}]")
    msrs = ffi.cast("struct kvm_msrs *", raw)
    msrs.nmsrs = len(values)
    for k, (index, value) in enumerate(values):
        msrs.entries[k].index, msrs.entries[k].data = index, value
    return raw, msrs


class VmState(_Ioctl):
    """VM fd state get/set and dirty-page logging."""

    def get_irqchip(self, chip_id: int) -> Any:
        """KVM_GET_IRQCHIP of one chip (PIC_MASTER, PIC_SLAVE or IOAPIC) as a struct kvm_irqchip."""
        chip = ffi.new("struct kvm_irqchip *")
        chip.chip_id = chip_id
        self._ioctl("KVM_GET_IRQCHIP", chip)
        return chip

    def set_irqchip(self, value: Any) -> None:
        """KVM_SET_IRQCHIP from a struct kvm_irqchip (its chip_id says which chip)."""
        self._ioctl("KVM_SET_IRQCHIP", _struct("struct kvm_irqchip", value))

    def get_pit2(self) -> Any:
        """KVM_GET_PIT2 as a struct kvm_pit_state2 (the i8254's three channels)."""
        out = ffi.new("struct kvm_pit_state2 *")
        self._ioctl("KVM_GET_PIT2", out)
        return out

    def set_pit2(self, value: Any) -> None:
        """KVM_SET_PIT2 from a struct kvm_pit_state2."""
        self._ioctl("KVM_SET_PIT2", _struct("struct kvm_pit_state2", value))

    def get_clock(self) -> Any:
        """KVM_GET_CLOCK as a struct kvm_clock_data (kvmclock's nanoseconds, and the host's realtime with it)."""
        out = ffi.new("struct kvm_clock_data *")
        self._ioctl("KVM_GET_CLOCK", out)
        return out

    def set_clock(self, value: Any) -> None:
        """KVM_SET_CLOCK from a struct kvm_clock_data; with KVM_CLOCK_REALTIME the kernel adds the realtime that
        passed since the clock was read (so a migrated guest's clock does not stand still)."""
        data = ffi.new("struct kvm_clock_data *")
        ffi.memmove(data, _struct("struct kvm_clock_data", value), ffi.sizeof("struct kvm_clock_data"))
        data.flags &= KVM_CLOCK_REALTIME
        self._ioctl("KVM_SET_CLOCK", data)

    def get_dirty_log(self, slot: int, pages: int) -> bytes:
        """KVM_GET_DIRTY_LOG: the slot's bitmap of pages written since the last call (bit i = page i), cleared."""
        words = (pages + 63) // 64
        bitmap = ffi.new(f"uint64_t[{words}]")
        log = ffi.new("struct kvm_dirty_log *")
        log.slot = slot
        log.dirty_bitmap = bitmap
        self._ioctl("KVM_GET_DIRTY_LOG", log)
        return bytes(ffi.buffer(bitmap))
