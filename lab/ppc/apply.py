"""Runs a PowerPC ioctl plan through a fd layer: the real KVM layer (`KvmFds`) or a recording one (`RecordingFds`).

Everything here is bytes: a step becomes a `Call` (the value, or the struct's bytes as the kernel reads them, and for
ONE_REG the register's bytes), and a layer answers with an `Answer` (the result and the bytes the kernel wrote back)
or raises KvmError. The real layer issues each call through the KVM layer's own wrappers (agent/kvm/fds.py), which
do the pointer work. SET_SREGS is built from the last GET_SREGS of the same fd. The executor stops at the first step
whose result differs from the plan's expectation, since later steps depend on the fds and state the earlier ones made.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvmplat.agent.errors import KvmError
from kvmplat.lab.ppc.plan import Expect, Step

__all__ = ["Answer", "Call", "KvmFds", "PpcFds", "RecordingFds", "StepResult", "apply_ppc", "plan_ok"]


@dataclass(frozen=True)
class Call:
    """One ioctl as data: fd, name, request, the value or struct bytes, and the ONE_REG register bytes sent."""

    fd: str
    name: str
    request: int
    value: int | None
    arg: bytes
    reg: bytes = b""

    @property
    def reg_id(self) -> int:
        """ONE_REG: the register id (kvm_one_reg.id, the struct's first 8 bytes)."""
        return int(struct.unpack("<Q", self.arg[:8])[0])


@dataclass(frozen=True)
class Answer:
    """What the kernel gave: the ioctl's result and the bytes it wrote back (the struct, or the ONE_REG register)."""

    ret: int
    out: bytes = b""


class PpcFds(Protocol):
    """A fd layer: issues one ioctl on a named fd (kvm, vm, vcpuN); CREATE_VM/CREATE_VCPU make the new fd known."""

    def call(self, call: Call) -> Answer:
        """The ioctl's answer (an fd for CREATE_*), or KvmError."""
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
    call = Call(step.fd, step.name, step.request, step.value, _argument(step, last_sregs), step.reg)
    try:
        answer = fds.call(call)
    except KvmError as e:
        return StepResult(step, None, e.errno, b"", step.expect.kind == "errno" and e.errno == step.expect.value)
    out = answer.out or call.reg or call.arg  # a call that writes nothing back leaves what it sent
    if step.name == "KVM_GET_SREGS":
        last_sregs[step.fd] = out
    return StepResult(step, answer.ret, 0, out, _matches(step.expect, answer.ret, out))


def _argument(step: Step, last_sregs: dict[str, bytes]) -> bytes:
    """The struct's bytes as the kernel reads them (a SET_SREGS: the fd's last GET_SREGS with the step's edits)."""
    if not step.patch:
        return step.arg
    base = bytearray(last_sregs.get(step.fd, b""))
    if not base:
        raise ValueError(f"{step.name} on {step.fd} needs a KVM_GET_SREGS on that fd first")
    for off, chunk in step.patch:
        base[off : off + len(chunk)] = chunk
    return bytes(base)


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
    """The real layer over agent/kvm/fds.py: Kvm, and the Vm and Vcpu objects the plan creates (parents create
    children), each call through the fd object's own wrapper."""

    def __init__(self, kvm: Any) -> None:
        self.kvm = kvm
        self.fds: dict[str, Any] = {"kvm": kvm}

    def call(self, call: Call) -> Answer:
        """Issues the call; the plan's request number must be this host's."""
        from kvmplat.agent.kvm.ioctls import REQUESTS

        if REQUESTS.get(call.name) != call.request:
            raise ValueError(
                f"{call.name}: plan request {call.request:#x} is not this host's {REQUESTS.get(call.name, 0):#x}"
            )
        owner = self.fds[call.fd]
        if call.name == "KVM_CREATE_VM":
            self.fds["vm"] = owner.create_vm(call.value or 0)
            return Answer(int(self.fds["vm"].fd))
        if call.name == "KVM_CREATE_VCPU":
            vcpu = owner.create_vcpu(call.value or 0)
            self.fds[f"vcpu{call.value or 0}"] = vcpu
            return Answer(int(vcpu.fd))
        return _WRAPPERS[call.name](owner, call)

    def release(self) -> None:
        """Closes vCPUs, then the VM."""
        for key in sorted((k for k in self.fds if k.startswith("vcpu")), reverse=True):
            self.fds.pop(key).close()
        vm = self.fds.pop("vm", None)
        if vm is not None:
            vm.close()


def _enable_cap(owner: Any, call: Call) -> Answer:
    cap, _flags, *args = struct.unpack_from("<II4Q", call.arg)
    owner.enable_cap(cap, *args)
    return Answer(0)


def _set_one_reg(owner: Any, call: Call) -> Answer:
    owner.set_one_reg(call.reg_id, call.reg)
    return Answer(0)


def _set_sregs(owner: Any, call: Call) -> Answer:
    owner.set_sregs_bytes(call.arg)
    return Answer(0)


def _pvinfo(owner: Any, call: Call) -> Answer:
    flags, hcall = owner.ppc_get_pvinfo()
    return Answer(0, struct.pack("<5I", flags, *hcall).ljust(len(call.arg), b"\0"))


_WRAPPERS: dict[str, Callable[[Any, Call], Answer]] = {
    "KVM_CHECK_EXTENSION": lambda owner, call: Answer(owner.check_extension(call.value or 0)),
    "KVM_ENABLE_CAP": _enable_cap,
    "KVM_SET_ONE_REG": _set_one_reg,
    "KVM_GET_ONE_REG": lambda owner, call: Answer(0, owner.get_one_reg(call.reg_id)),
    "KVM_GET_SREGS": lambda owner, call: Answer(0, owner.get_sregs_bytes()),
    "KVM_SET_SREGS": _set_sregs,
    "KVM_PPC_GET_PVINFO": _pvinfo,
}


Responder = Callable[[Call], Answer | int]


@dataclass
class RecordingFds:
    """Records every call; `respond(call)` plays the kernel (answers with the bytes it writes back, or raises
    KvmError)."""

    respond: Responder | None = None
    calls: list[Call] = field(default_factory=list)
    _next_fd: int = 10

    def call(self, call: Call) -> Answer:
        """Records the call and answers it."""
        self.calls.append(call)
        if self.respond is not None:
            answer = self.respond(call)
            return answer if isinstance(answer, Answer) else Answer(answer)
        if call.name in ("KVM_CREATE_VM", "KVM_CREATE_VCPU"):
            self._next_fd += 1
            return Answer(self._next_fd)
        return Answer(0)

    def release(self) -> None:
        """Nothing to close."""
