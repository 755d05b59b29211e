"""Runs a PowerPC ioctl plan through a fd layer: the real KVM layer (`KvmFds`) or a recording one (`RecordingFds`).

The executor owns the argument memory (cffi buffers, kvm_one_reg.addr pointing at the register's bytes, SET_SREGS
built from the last GET_SREGS of the same fd); a layer only issues `call(fd, name, request, arg)` and returns the
result or raises KvmError. It stops at the first step whose result differs from the plan's expectation, since later
steps depend on the fds and state the earlier ones made.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvmplat.agent.errors import KvmError
from kvmplat.agent.kvm._kvmc import ffi
from kvmplat.agent.platform.ppc_plan import Expect, Step

__all__ = ["Call", "KvmFds", "PpcFds", "RecordingFds", "StepResult", "apply_ppc", "plan_ok"]


class PpcFds(Protocol):
    """A fd layer: issues one ioctl on a named fd (kvm, vm, vcpuN); CREATE_VM/CREATE_VCPU make the new fd known."""

    def call(self, fd: str, name: str, request: int, arg: Any) -> int:
        """The ioctl's result (an fd for CREATE_*), or KvmError."""
        ...

    def release(self) -> None:
        """Closes every VM and vCPU fd made so far (keeps /dev/kvm)."""
        ...


@dataclass(frozen=True)
class StepResult:
    """What a step gave: result or errno, the output bytes (struct, or ONE_REG register), and whether as planned."""

    step: Step
    ret: int | None
    errno: int = 0
    out: bytes = b""
    ok: bool = False


def apply_ppc(plan: Sequence[Step], fds: PpcFds) -> list[StepResult]:
    """Runs `plan` on `fds` in order until a step's result differs from its expectation."""
    results: list[StepResult] = []
    last_sregs: dict[str, bytes] = {}
    for step in plan:
        result = _run_step(step, fds, last_sregs)
        results.append(result)
        if not result.ok:
            break
    return results


def plan_ok(results: Sequence[StepResult], plan: Sequence[Step]) -> bool:
    """True when every step of `plan` ran and gave its expected result."""
    return len(results) == len(plan) and all(r.ok for r in results)


def _run_step(step: Step, fds: PpcFds, last_sregs: dict[str, bytes]) -> StepResult:
    arg, cell = _argument(step, last_sregs)
    try:
        ret = fds.call(step.fd, step.name, step.request, arg)
    except KvmError as e:
        return StepResult(step, None, e.errno, b"", step.expect.kind == "errno" and e.errno == step.expect.value)
    out = b""
    if cell is not None:
        out = bytes(ffi.buffer(cell))
    elif not isinstance(arg, int):
        out = bytes(ffi.buffer(arg))
    if step.name == "KVM_GET_SREGS":
        last_sregs[step.fd] = out
    return StepResult(step, ret, 0, out, _matches(step.expect, ret, out))


def _argument(step: Step, last_sregs: dict[str, bytes]) -> tuple[Any, Any]:
    """The ioctl argument (int, or a cffi buffer) and the ONE_REG register cell it points at."""
    if step.value is not None:
        return step.value, None
    data = step.arg
    if step.patch:
        base = bytearray(last_sregs.get(step.fd, b""))
        if not base:
            raise ValueError(f"{step.name} on {step.fd} needs a KVM_GET_SREGS on that fd first")
        for off, chunk in step.patch:
            base[off : off + len(chunk)] = chunk
        data = bytes(base)
    if not data:
        return 0, None
    buf = _buffer(data)
    if not step.reg:
        return buf, None
    cell = _buffer(step.reg)
    # kvm_one_reg.addr: the kernel reads or writes the register there (native byte order of the host).
    ffi.buffer(buf)[8:16] = struct.pack("=Q", int(ffi.cast("uintptr_t", cell)))
    return buf, cell


def _buffer(data: bytes) -> Any:
    """A C buffer of exactly len(data) bytes (initialising uint8_t[] from bytes would add a terminating NUL)."""
    buf = ffi.new("uint8_t[]", len(data))
    ffi.buffer(buf)[:] = data
    return buf


def _matches(expect: Expect, ret: int, out: bytes) -> bool:
    if expect.kind == "any":
        return True
    if expect.kind == "fd":
        return ret >= 0
    if expect.kind == "zero":
        return ret == 0
    if expect.kind == "nonzero":
        return ret != 0
    if expect.kind == "out":
        got = int.from_bytes(out[expect.offset : expect.offset + expect.size], "little")
        return ret == 0 and (got & expect.mask if expect.mask else got) == expect.value
    return False  # "errno": the call was expected to fail


class KvmFds:
    """The real layer over kvm.py: Kvm, and the Vm and Vcpu objects the plan creates (parents create children)."""

    def __init__(self, kvm: Any) -> None:
        self.kvm = kvm
        self.fds: dict[str, Any] = {"kvm": kvm}

    def call(self, fd: str, name: str, request: int, arg: Any) -> int:
        """Issues the ioctl through the fd object's own wrapper; the plan's number must be this host's."""
        from kvmplat.agent.kvm.ioctls import REQUESTS

        if REQUESTS.get(name) != request:
            raise ValueError(f"{name}: plan request {request:#x} is not this host's {REQUESTS.get(name, 0):#x}")
        owner = self.fds[fd]
        if name == "KVM_CREATE_VM":
            self.fds["vm"] = owner.create_vm(arg)
            return int(self.fds["vm"].fd)
        if name == "KVM_CREATE_VCPU":
            vcpu = owner.create_vcpu(arg)
            self.fds[f"vcpu{arg}"] = vcpu
            return int(vcpu.fd)
        return int(owner._ioctl(name, arg))

    def release(self) -> None:
        """Closes vCPUs, then the VM."""
        for key in sorted((k for k in self.fds if k.startswith("vcpu")), reverse=True):
            self.fds.pop(key).close()
        vm = self.fds.pop("vm", None)
        if vm is not None:
            vm.close()


@dataclass(frozen=True)
class Call:
    """A recorded ioctl: fd, name, request, the value or struct bytes, and the ONE_REG register bytes sent."""

    fd: str
    name: str
    request: int
    value: int | None
    arg: bytes
    reg: bytes = b""


Responder = Callable[[Call, Any], int]


@dataclass
class RecordingFds:
    """Records every call; `respond(call, arg)` plays the kernel (may write into `arg`, raise KvmError)."""

    respond: Responder | None = None
    calls: list[Call] = field(default_factory=list)
    _next_fd: int = 10

    def call(self, fd: str, name: str, request: int, arg: Any) -> int:
        """Records the call, reading ONE_REG's register through kvm_one_reg.addr as the kernel would."""
        if isinstance(arg, int):
            rec = Call(fd, name, request, arg, b"")
        else:
            raw = bytes(ffi.buffer(arg))
            reg = b""
            if name in ("KVM_SET_ONE_REG", "KVM_GET_ONE_REG"):
                reg_id, addr = struct.unpack("=QQ", raw[:16])
                reg = bytes(ffi.buffer(ffi.cast("uint8_t *", addr), 1 << ((reg_id >> 52) & 0xF)))
            rec = Call(fd, name, request, None, raw, reg)
        self.calls.append(rec)
        if self.respond is not None:
            return self.respond(rec, arg)
        if name in ("KVM_CREATE_VM", "KVM_CREATE_VCPU"):
            self._next_fd += 1
            return self._next_fd
        return 0

    def release(self) -> None:
        """Nothing to close."""
