"""A simulated PowerPC KVM, played from a `PpcHost`: the responder behind `RecordingFds` in tests and lab dry runs.

It answers from facts recorded from the real kernels, each with where it was seen (`HV_ARCH_COMPAT`, and the notes
on each handler), never from kvmplat's own level table: the resolver predicts, the simulator answers as the kernels
did, and tests/platform_ppc/test_ppc_sim.py holds the simulator to the lab's recorded consoles. Where the lab has not
been, the facts come from the kernel source (Linux 6.1) and say so. The real lab stays the judge.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

from kvmplat.agent.errors import KvmError
from kvmplat.agent.platform.ppc import CAP_PPC_GET_PVINFO, PpcHost
from kvmplat.lab.ppc.apply import Answer, Call, RecordingFds
from kvmplat.lab.ppc.plan import KVM_REG_PPC_ARCH_COMPAT, OFF_E_EPCR, OFF_E_FEATURES, SREGS_E_64

__all__ = ["HV_ARCH_COMPAT", "SimPpcKernel", "sim_fds"]

BOOKE_FEATURES = 0x7  # E_BASE | E_ARCH206 | E_64, what an e5500 reports (modelled host: e5500-booke.json)

# The KVM_REG_PPC_ARCH_COMPAT values book3s_hv accepts, by the host core's PVR version (upper 16 bits). 0 ("no
# compat") is accepted everywhere; anything else is EINVAL.
#   0x004e (POWER9): recorded in tests/golden/ppc/lab/hv.console (Debian 6.1.0-50 KVM-HV on QEMU 7.2 POWER9):
#       0x0f000004 and 0x0f000005 accepted (cases spapr-power8, spapr-power9), 0x0f000006 EINVAL (spapr-power10).
#       The older values are not recorded: book3s_hv.c kvmppc_set_arch_compat accepts PVR_ARCH_205, _206, _206p and
#       _207 whenever their PCR bit is not above the host's (CPU_FTR_ARCH_300 here).
#   0x004b/0x004c/0x004d (POWER8, CPU_FTR_ARCH_207S): not recorded; book3s_hv.c: PVR_ARCH_205 .. PVR_ARCH_207.
#   0x0080 (POWER10, CPU_FTR_ARCH_31): not recorded; book3s_hv.c: PVR_ARCH_205 .. PVR_ARCH_31.
_UPTO_207 = frozenset({0x0F000002, 0x0F000003, 0x0F100003, 0x0F000004})
HV_ARCH_COMPAT: dict[int, frozenset[int]] = {
    0x004E: _UPTO_207 | {0x0F000005},
    0x004B: _UPTO_207,
    0x004C: _UPTO_207,
    0x004D: _UPTO_207,
    0x0080: _UPTO_207 | {0x0F000005, 0x0F000006},
}


def _fail(call: Call, err: int = errno.EINVAL) -> KvmError:
    return KvmError(call.name, call.fd, err)


@dataclass
class SimPpcKernel:
    """The kernel side of one VM at a time: flavour, per-vCPU PVR, ARCH_COMPAT and EPCR."""

    host: PpcHost
    flavour: str = ""
    pvr: dict[str, int] = field(default_factory=dict)
    compat: dict[str, int] = field(default_factory=dict)
    epcr: dict[str, int] = field(default_factory=dict)

    def __call__(self, call: Call) -> Answer:
        """Answers one ioctl with the bytes the kernel would write back."""
        handler = getattr(self, "_" + call.name.lower(), None)
        if handler is None:
            raise _fail(call, errno.ENOTTY)
        answer: Answer = handler(call)
        return answer

    def _kvm_check_extension(self, call: Call) -> Answer:
        cap = call.value or 0
        return Answer(self.host.caps.get(cap, 0) if call.fd == "kvm" else self.host.vm_cap(self.flavour, cap))

    def _kvm_create_vm(self, call: Call) -> Answer:
        # An absent flavour's type: EINVAL (lab: accel-pr on the HV kernel, accel-hv on the PR kernel).
        want = {0: self.host.default_accel, 1: "hv", 2: "pr"}.get(call.value or 0, "")
        if self.host.kind == "booke":
            want = "booke" if call.value == 0 else ""
        if not want or want not in self.host.accels:
            raise _fail(call)
        self.flavour = want
        return Answer(10)

    def _kvm_create_vcpu(self, call: Call) -> Answer:
        self.pvr[f"vcpu{call.value}"] = self.host.pvr
        return Answer(20 + (call.value or 0))

    def _kvm_enable_cap(self, call: Call) -> Answer:
        if self.host.kind == "booke":  # e500mc has no KVM_CAP_PPC_PAPR (kvm/e500mc.c; modelled host)
            raise _fail(call)
        return Answer(0)

    def _kvm_set_one_reg(self, call: Call) -> Answer:
        # PR has no ARCH_COMPAT register: EINVAL (lab pr.console: spapr-power8/9/10 all refused with errno 22).
        value = struct.unpack("<I", call.reg)[0]
        accepted = HV_ARCH_COMPAT.get(self.host.pvr >> 16, frozenset()) | {0}
        if call.reg_id != KVM_REG_PPC_ARCH_COMPAT or self.flavour != "hv" or value not in accepted:
            raise _fail(call)
        self.compat[call.fd] = value
        return Answer(0)

    def _kvm_get_one_reg(self, call: Call) -> Answer:
        if self.flavour != "hv":
            raise _fail(call)
        return Answer(0, struct.pack("<I", self.compat.get(call.fd, 0)))

    def _kvm_get_sregs(self, call: Call) -> Answer:
        out = bytearray(call.arg)
        out[0:4] = struct.pack("<I", self.pvr.get(call.fd, self.host.pvr))
        if self.flavour == "booke":
            out[OFF_E_FEATURES : OFF_E_FEATURES + 4] = struct.pack("<I", BOOKE_FEATURES)
            out[OFF_E_EPCR : OFF_E_EPCR + 4] = struct.pack("<I", self.epcr.get(call.fd, 0))
        return Answer(0, bytes(out))

    def _kvm_set_sregs(self, call: Call) -> Answer:
        # HV keeps the host's PVR (book3s_hv.c set_sregs_hv refuses another); PR takes any (lab pr.console).
        pvr = struct.unpack("<I", call.arg[:4])[0]
        if self.flavour != "pr" and pvr != self.host.pvr:
            raise _fail(call)
        # whether PR takes a 32-bit Book3S PVR is the host's learnt answer (learn._learn_book3s32; true on the lab's
        # KVM-PR kernel, tests/golden/ppc/lab/pr.console)
        if self.flavour == "pr" and self.host.book3s32 is False and pvr < 0x330000:
            raise _fail(call)
        self.pvr[call.fd] = pvr
        features = struct.unpack("<I", call.arg[OFF_E_FEATURES : OFF_E_FEATURES + 4])[0]
        if self.flavour == "booke" and features & SREGS_E_64:
            self.epcr[call.fd] = struct.unpack("<I", call.arg[OFF_E_EPCR : OFF_E_EPCR + 4])[0]
        return Answer(0)

    def _kvm_ppc_get_pvinfo(self, call: Call) -> Answer:
        if not self.host.vm_cap(self.flavour, CAP_PPC_GET_PVINFO) or not self.host.pvinfo_hcall:
            raise _fail(call)
        return Answer(
            0, struct.pack("<5I", self.host.pvinfo_flags, *self.host.pvinfo_hcall).ljust(len(call.arg), b"\0")
        )


class _SimFds(RecordingFds):
    """RecordingFds whose release() also forgets the simulated VM."""

    def release(self) -> None:
        """Drops the simulated VM state."""
        sim = self.respond
        if isinstance(sim, SimPpcKernel):
            sim.flavour = ""
            sim.pvr.clear()
            sim.compat.clear()
            sim.epcr.clear()


def sim_fds(host: PpcHost) -> RecordingFds:
    """A recording fd layer answered by a simulated kernel of `host`."""
    return _SimFds(respond=SimPpcKernel(host))
