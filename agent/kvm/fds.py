"""The KVM layer: one object per kernel file descriptor, each owning and closing it.

    Kvm  (/dev/kvm)     .create_vm()    -> Vm
    Vm   (VM fd)        .create_vcpu(i) -> Vcpu, .add_memory() -> GuestMemory
    Vcpu (vCPU fd)      owns its kvm_run mapping

Only a parent creates a child. Every wrapper is named after its ioctl and raises KvmError (ioctl name, fd kind,
errno) on failure. Objects close idempotently and work as context managers. No grpc here.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import mmap
import os
from types import TracebackType
from typing import Any, Self

from kvmplat.agent.errors import KvmError, Unavailable
from kvmplat.agent.kvm._kvmc import ffi, lib
from kvmplat.agent.kvm.ioctls import REQUESTS, Cap, struct_of
from kvmplat.agent.kvm.ramfile import ram_file
from kvmplat.agent.kvm.x86state import KVM_MEM_LOG_DIRTY_PAGES, KvmState, VcpuState, VmState

__all__ = ["ExitReason", "GuestMemory", "Kvm", "MpState", "Vcpu", "Vm", "exit_reason_name"]

KVM_API_VERSION = 12
CPUID_FIRST_ENTRIES = 64  # the first buffer of a CPUID query; it doubles on E2BIG
CPUID_MAX_ENTRIES = 512
PAGE = 4096


class ExitReason(enum.IntEnum):
    """KVM_EXIT_* (uapi linux/kvm.h)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    OSI = 18
    PAPR_HCALL = 19
    WATCHDOG = 21
    EPR = 23
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    HYPERV = 27
    X86_RDMSR = 29
    X86_WRMSR = 30
    X86_BUS_LOCK = 33


def exit_reason_name(reason: int) -> str:
    """KVM's name of an exit reason in lower case ("hlt"), or "exit_N" for one this module does not name."""
    return ExitReason(reason).name.lower() if reason in ExitReason._value2member_map_ else f"exit_{reason}"


class MpState(enum.IntEnum):
    """KVM_MP_STATE_* values of struct kvm_mp_state."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4


class _Fd:
    """A kernel fd this object owns; `kind` names it in errors."""

    kind = "?"

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _ioctl(self, name: str, arg: Any = None, hint: str = "") -> int:
        """Issues ioctl `name` with a pointer (cdata), an int value or nothing; returns the result or raises."""
        if self.fd < 0:
            raise KvmError(name, self.kind, errno.EBADF, "the fd is closed")
        req = REQUESTS[name]
        if arg is None or isinstance(arg, int):
            r = lib.kp_ioctl_val(self.fd, req, arg or 0)
        else:
            r = lib.kp_ioctl_ptr(self.fd, req, arg)
        if r < 0:
            raise KvmError(name, self.kind, -r, hint)
        return int(r)

    def _struct_out(self, name: str) -> bytes:
        """Issues `name` on a zeroed struct of the host's architecture; the bytes the kernel wrote."""
        buf = ffi.new(f"{struct_of(name)} *")
        self._ioctl(name, buf)
        return bytes(ffi.buffer(buf))

    def _struct_in(self, name: str, data: bytes) -> None:
        """Issues `name` on a struct of the host's architecture holding exactly `data`."""
        buf = ffi.new(f"{struct_of(name)} *")
        if len(data) != ffi.sizeof(buf[0]):
            raise ValueError(f"{name} takes {ffi.sizeof(buf[0])} bytes, not {len(data)}")
        ffi.buffer(buf)[:] = data
        self._ioctl(name, buf)

    def check_extension(self, cap: Cap | int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else the capability's value."""
        return self._ioctl("KVM_CHECK_EXTENSION", int(cap))

    def close(self) -> None:
        """Closes the fd (idempotent; also after a constructor that failed before owning one)."""
        if getattr(self, "fd", -1) >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()


class Kvm(_Fd, KvmState):
    """/dev/kvm."""

    kind = "kvm"

    def __init__(self, path: str = "/dev/kvm") -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Unavailable(f"{path} does not exist: is the kvm module loaded?") from None
        except PermissionError:
            raise Unavailable(f"{path}: permission denied (run as root or join the kvm group)") from None
        super().__init__(fd)
        version = self.get_api_version()
        if version != KVM_API_VERSION:
            self.close()
            raise Unavailable(f"{path} speaks KVM API {version}, kvmplat needs {KVM_API_VERSION}")

    def get_api_version(self) -> int:
        """KVM_GET_API_VERSION (12 on every kernel since 2.6.22)."""
        return self._ioctl("KVM_GET_API_VERSION")

    def get_vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to map from a vCPU fd (kvm_run and its data pages)."""
        return self._ioctl("KVM_GET_VCPU_MMAP_SIZE")

    def get_supported_cpuid(self) -> list[tuple[int, ...]]:
        """KVM_GET_SUPPORTED_CPUID as (function, index, flags, eax, ebx, ecx, edx) rows; retries on E2BIG."""
        return _cpuid_query(self, "KVM_GET_SUPPORTED_CPUID")

    def get_supported_hv_cpuid(self) -> list[tuple[int, ...]]:
        """KVM_GET_SUPPORTED_HV_CPUID (system fd): the Hyper-V leaves KVM can offer."""
        return _cpuid_query(self, "KVM_GET_SUPPORTED_HV_CPUID")

    def create_vm(self, machine_type: int = 0) -> Vm:
        """KVM_CREATE_VM (type 0 on x86; on ppc 0 default, 1 HV, 2 PR)."""
        return Vm(self._ioctl("KVM_CREATE_VM", machine_type), self)


def _cpuid_query(fd: _Fd, name: str) -> list[tuple[int, ...]]:
    """A kvm_cpuid2 in/out query, growing the buffer on E2BIG (nent is not updated on E2BIG)."""
    n = CPUID_FIRST_ENTRIES
    while True:
        raw = ffi.new(f"uint8_t[{ffi.sizeof('struct kvm_cpuid2') + n * ffi.sizeof('struct kvm_cpuid_entry2')}]")
        cpuid = ffi.cast("struct kvm_cpuid2 *", raw)
        cpuid.nent = n
        try:
            fd._ioctl(name, cpuid)
        except KvmError as e:
            if e.errno == errno.E2BIG and n < CPUID_MAX_ENTRIES:
                n *= 2
                continue
            raise
        return [_entry_row(cpuid.entries[i]) for i in range(cpuid.nent)]


def _entry_row(e: Any) -> tuple[int, ...]:
    return (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)


class GuestMemory:
    """Guest RAM at `gpa`: an unnamed file (ramfile: huge-page tmpfs, else a memfd) mapped shared, so the agent can map
    the same pages to copy them out (snapshot, migration) or in (restore) without a detour through the runner; freed
    when closed (after its VM stops using it). `backing` says which file it is."""

    def __init__(self, size: int, gpa: int = 0) -> None:
        self.size = size
        self.gpa = gpa
        self.fd, self.backing = ram_file(size)
        try:
            self._map: mmap.mmap | None = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED)
        except OSError:
            os.close(self.fd)
            raise
        # for a memfd: huge pages where shmem_enabled says "advise"; a kernel without THP (the PowerPC lab's hash-MMU
        # KVM-PR kernel) answers EINVAL, and the memory is as good without
        with contextlib.suppress(OSError):
            self._map.madvise(mmap.MADV_HUGEPAGE)
        self._cdata = ffi.from_buffer(self._map)
        self.host_addr = int(ffi.cast("uintptr_t", self._cdata))

    def write(self, gpa: int, data: bytes) -> None:
        """Copies `data` into guest memory at guest physical address `gpa`."""
        off = gpa - self.gpa
        if self._map is None or off < 0 or off + len(data) > self.size:
            raise ValueError(f"guest range {gpa:#x}+{len(data):#x} outside memory {self.gpa:#x}+{self.size:#x}")
        self._map[off : off + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        """Bytes of guest memory at `gpa`."""
        off = gpa - self.gpa
        if self._map is None or off < 0 or off + length > self.size:
            raise ValueError(f"guest range {gpa:#x}+{length:#x} outside memory")
        return self._map[off : off + length]

    def close(self) -> None:
        """Unmaps the memory (idempotent)."""
        if self._map is not None:
            ffi.release(self._cdata)
            self._map.close()
            self._map = None
            os.close(self.fd)
            self.fd = -1

    @property
    def pages(self) -> int:
        """The number of 4 KiB pages."""
        return self.size // PAGE


class Vm(_Fd, VmState):
    """A VM fd: memory slots, irqchip, vCPUs."""

    kind = "vm"

    def __init__(self, fd: int, kvm: Kvm) -> None:
        super().__init__(fd)
        self.kvm = kvm
        self._slots: list[GuestMemory] = []

    def add_memory(self, size: int, gpa: int = 0, flags: int = 0) -> GuestMemory:
        """Maps fresh anonymous memory and installs it as the next slot (KVM_SET_USER_MEMORY_REGION)."""
        mem = GuestMemory(size, gpa)
        try:
            self.set_user_memory_region(len(self._slots), flags, mem)
        except KvmError:
            mem.close()
            raise
        self._slots.append(mem)
        return mem

    def set_user_memory_region(self, slot: int, flags: int, mem: GuestMemory) -> None:
        """KVM_SET_USER_MEMORY_REGION: installs `mem` as `slot` (or changes an installed slot's flags)."""
        region = ffi.new("struct kvm_userspace_memory_region *")
        region.slot, region.flags = slot, flags
        region.guest_phys_addr, region.memory_size, region.userspace_addr = mem.gpa, mem.size, mem.host_addr
        self._ioctl("KVM_SET_USER_MEMORY_REGION", region)

    def log_dirty_pages(self, on: bool) -> None:
        """Turns dirty-page logging on or off for every slot (KVM_MEM_LOG_DIRTY_PAGES)."""
        for slot, mem in enumerate(self._slots):
            self.set_user_memory_region(slot, KVM_MEM_LOG_DIRTY_PAGES if on else 0, mem)

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR (three pages Intel VMX needs for real mode)."""
        self._ioctl("KVM_SET_TSS_ADDR", addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR (one page Intel VMX needs)."""
        self._ioctl("KVM_SET_IDENTITY_MAP_ADDR", ffi.new("uint64_t *", addr))

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and local APICs."""
        self._ioctl("KVM_CREATE_IRQCHIP")

    def create_pit2(self) -> None:
        """KVM_CREATE_PIT2: the in-kernel i8254 timer."""
        self._ioctl("KVM_CREATE_PIT2", ffi.new("struct kvm_pit_config *"))

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: sets an interrupt line's level."""
        self._ioctl("KVM_IRQ_LINE", ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level}))

    def enable_cap(self, cap: Cap | int, *args: int) -> None:
        """KVM_ENABLE_CAP on the VM fd."""
        self._ioctl("KVM_ENABLE_CAP", _enable_cap_arg(cap, args))

    def ppc_get_pvinfo(self) -> tuple[int, tuple[int, ...]]:
        """KVM_PPC_GET_PVINFO: the flags and the four instruction words of the paravirt hypercall sequence."""
        info = ffi.new("struct kvm_ppc_pvinfo *")
        self._ioctl("KVM_PPC_GET_PVINFO", info)
        return int(info.flags), tuple(int(info.hcall[i]) for i in range(4))

    def create_vcpu(self, index: int) -> Vcpu:
        """KVM_CREATE_VCPU, with its kvm_run mapped."""
        return Vcpu(self._ioctl("KVM_CREATE_VCPU", index), self, index)

    def close(self) -> None:
        """Closes the VM fd, then frees guest memory (idempotent)."""
        super().close()
        for mem in self._slots:
            mem.close()
        self._slots.clear()


def _enable_cap_arg(cap: Cap | int, args: tuple[int, ...]) -> Any:
    arg = ffi.new("struct kvm_enable_cap *")
    arg.cap = int(cap)
    for i, v in enumerate(args):
        arg.args[i] = v
    return arg


class Vcpu(_Fd, VcpuState):
    """A vCPU fd and its kvm_run mapping."""

    kind = "vcpu"

    def __init__(self, fd: int, vm: Vm, index: int) -> None:
        super().__init__(fd)
        self.vm = vm
        self.index = index
        try:
            size = vm.kvm.get_vcpu_mmap_size()
            self._run_map: mmap.mmap | None = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, KvmError):
            self.close()
            raise
        self._run_buf = ffi.from_buffer(self._run_map)
        self.run_struct: Any = ffi.cast("struct kvm_run *", self._run_buf)

    def run(self) -> ExitReason | int:
        """KVM_RUN until an exit; returns the exit reason (KvmError with errno EINTR when kicked). EAGAIN is run
        again: hardware KVM returns it once for a vCPU woken from wait-for-SIPI, as the fast loop knows too."""
        while True:
            try:
                self._ioctl("KVM_RUN")
                break
            except KvmError as e:
                if e.errno != errno.EAGAIN:
                    raise
        reason = int(self.run_struct.exit_reason)
        return ExitReason(reason) if reason in ExitReason._value2member_map_ else reason

    def get_regs(self) -> Any:
        """KVM_GET_REGS as a struct kvm_regs."""
        regs = ffi.new("struct kvm_regs *")
        self._ioctl("KVM_GET_REGS", regs)
        return regs

    def set_regs(self, regs: Any) -> None:
        """KVM_SET_REGS from a struct kvm_regs."""
        self._ioctl("KVM_SET_REGS", regs)

    def get_sregs(self) -> Any:
        """KVM_GET_SREGS as a struct kvm_sregs."""
        sregs = ffi.new("struct kvm_sregs *")
        self._ioctl("KVM_GET_SREGS", sregs)
        return sregs

    def set_sregs(self, sregs: Any) -> None:
        """KVM_SET_SREGS from a struct kvm_sregs."""
        self._ioctl("KVM_SET_SREGS", sregs)

    def get_sregs_bytes(self) -> bytes:
        """KVM_GET_SREGS as the bytes of this host architecture's kvm_sregs (the PowerPC plans edit bytes)."""
        return self._struct_out("KVM_GET_SREGS")

    def set_sregs_bytes(self, data: bytes) -> None:
        """KVM_SET_SREGS from the bytes of this host architecture's kvm_sregs."""
        self._struct_in("KVM_SET_SREGS", data)

    def get_regs_bytes(self) -> bytes:
        """KVM_GET_REGS as the bytes of this host architecture's kvm_regs."""
        return self._struct_out("KVM_GET_REGS")

    def set_regs_bytes(self, data: bytes) -> None:
        """KVM_SET_REGS from the bytes of this host architecture's kvm_regs."""
        self._struct_in("KVM_SET_REGS", data)

    def get_one_reg(self, reg_id: int) -> bytes:
        """KVM_GET_ONE_REG: the register's bytes (as many as its id's KVM_REG_SIZE says)."""
        cell = ffi.new("uint8_t[]", _one_reg_size(reg_id))
        self._ioctl("KVM_GET_ONE_REG", _one_reg(reg_id, cell))
        return bytes(ffi.buffer(cell))

    def set_one_reg(self, reg_id: int, value: bytes) -> None:
        """KVM_SET_ONE_REG from the register's bytes (exactly its id's KVM_REG_SIZE)."""
        if len(value) != _one_reg_size(reg_id):
            raise ValueError(f"register {reg_id:#x} takes {_one_reg_size(reg_id)} bytes, not {len(value)}")
        cell = ffi.new("uint8_t[]", len(value))
        ffi.buffer(cell)[:] = value
        self._ioctl("KVM_SET_ONE_REG", _one_reg(reg_id, cell))

    def set_cpuid2(self, rows: list[tuple[int, ...]]) -> None:
        """KVM_SET_CPUID2 from (function, index, flags, eax, ebx, ecx, edx) rows; before the first KVM_RUN."""
        raw = ffi.new(f"uint8_t[{ffi.sizeof('struct kvm_cpuid2') + len(rows) * ffi.sizeof('struct kvm_cpuid_entry2')}]")
        cpuid = ffi.cast("struct kvm_cpuid2 *", raw)
        cpuid.nent = len(rows)
        for i, (fn, idx, flags, a, b, c, d) in enumerate(rows):
            e = cpuid.entries[i]
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx = fn, idx, flags, a, b, c, d
        self._ioctl("KVM_SET_CPUID2", cpuid)

    def get_mp_state(self) -> MpState:
        """KVM_GET_MP_STATE."""
        st = ffi.new("struct kvm_mp_state *")
        self._ioctl("KVM_GET_MP_STATE", st)
        return MpState(st.mp_state)

    def set_mp_state(self, state: MpState) -> None:
        """KVM_SET_MP_STATE (e.g. RUNNABLE for an application processor started without INIT/SIPI)."""
        self._ioctl("KVM_SET_MP_STATE", ffi.new("struct kvm_mp_state *", {"mp_state": int(state)}))

    def enable_cap(self, cap: Cap | int, *args: int) -> None:
        """KVM_ENABLE_CAP on the vCPU fd."""
        self._ioctl("KVM_ENABLE_CAP", _enable_cap_arg(cap, args))

    def close(self) -> None:
        """Unmaps kvm_run, then closes the fd (idempotent)."""
        run_map = getattr(self, "_run_map", None)
        if run_map is not None:
            self.run_struct = None
            ffi.release(self._run_buf)
            self._run_map = None
            run_map.close()
        super().close()


def _one_reg_size(reg_id: int) -> int:
    """KVM_REG_SIZE(id): bits 52..55 hold log2 of the register's size in bytes."""
    return 1 << ((reg_id >> 52) & 0xF)


def _one_reg(reg_id: int, cell: Any) -> Any:
    """A struct kvm_one_reg whose addr points at `cell` (which must outlive the ioctl)."""
    return ffi.new("struct kvm_one_reg *", {"id": reg_id, "addr": int(ffi.cast("uintptr_t", cell))})
