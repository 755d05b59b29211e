"""A simulated PowerPC KVM, played from a `PpcHost`: the responder behind `RecordingFds` in tests and lab dry runs.

It answers as the real kernels in reference/PPC_ON_TCG.md did: KVM_CREATE_VM fails with EINVAL for a flavour that
is absent; ARCH_COMPAT is accepted by HV for levels up to the host's and refused (EINVAL) above and on PR;
GET_SREGS reads the host PVR; HV and BookE refuse another PVR in SET_SREGS; only PR has GET_PVINFO on a VM fd.
It is a model of those answers, not of KVM, and proves only that the agent's side is consistent with them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from kvmplat.agent.errors import KvmError
from kvmplat.agent.kvm._kvmc import ffi
from kvmplat.agent.platform.ppc import PpcHost
from kvmplat.agent.platform.ppc_apply import Call, RecordingFds
from kvmplat.agent.platform.ppc_levels import LEVELS, level_by_name
from kvmplat.agent.platform.ppc_plan import KVM_REG_PPC_ARCH_COMPAT, OFF_E_EPCR, OFF_E_FEATURES, SREGS_E_64

__all__ = ["SimPpcKernel", "sim_fds"]

EINVAL, ENOTTY = 22, 25
BOOKE_FEATURES = 0x7  # E_BASE | E_ARCH206 | E_64, what an e5500 reports


@dataclass
class SimPpcKernel:
    """The kernel side of one VM at a time: flavour, per-vCPU PVR, ARCH_COMPAT and EPCR."""

    host: PpcHost
    flavour: str = ""
    pvr: dict[str, int] = field(default_factory=dict)
    compat: dict[str, int] = field(default_factory=dict)
    epcr: dict[str, int] = field(default_factory=dict)

    def __call__(self, call: Call, arg: Any) -> int:
        """Answers one ioctl, writing outputs into `arg` as the kernel would."""
        handler = getattr(self, "_" + call.name.lower(), None)
        if handler is None:
            raise KvmError(call.name, call.fd, ENOTTY)
        return int(handler(call, arg))

    def _fail(self, call: Call, err: int = EINVAL) -> KvmError:
        return KvmError(call.name, call.fd, err)

    def _kvm_check_extension(self, call: Call, arg: Any) -> int:
        cap = call.value or 0
        if call.fd == "kvm":
            return self.host.caps.get(cap, 0)
        return self.host.vm_cap(self.flavour, cap)

    def _kvm_create_vm(self, call: Call, arg: Any) -> int:
        want = {0: self.host.default_accel, 1: "hv", 2: "pr"}.get(call.value or 0, "")
        if self.host.kind == "booke":
            want = "booke" if call.value == 0 else ""
        if not want or want not in self.host.accels:
            raise self._fail(call)
        self.flavour = want
        return 10

    def _kvm_create_vcpu(self, call: Call, arg: Any) -> int:
        self.pvr[f"vcpu{call.value}"] = self.host.pvr
        return 20 + (call.value or 0)

    def _kvm_enable_cap(self, call: Call, arg: Any) -> int:
        if self.host.kind == "booke":
            raise self._fail(call)
        return 0

    def _kvm_set_one_reg(self, call: Call, arg: Any) -> int:
        reg_id = struct.unpack("<Q", call.arg[:8])[0]
        value = struct.unpack("<I", call.reg)[0]
        top = level_by_name(self.host.level) if self.host.level else None
        allowed = {lv.logical_pvr for lv in LEVELS if top is not None and lv.rank <= top.rank} | {0}
        if reg_id != KVM_REG_PPC_ARCH_COMPAT or self.flavour != "hv" or value not in allowed:
            raise self._fail(call)
        self.compat[call.fd] = value
        return 0

    def _kvm_get_one_reg(self, call: Call, arg: Any) -> int:
        if self.flavour != "hv":
            raise self._fail(call)
        addr = struct.unpack("=Q", call.arg[8:16])[0]
        ffi.buffer(ffi.cast("uint8_t *", addr), 4)[:] = struct.pack("<I", self.compat.get(call.fd, 0))
        return 0

    def _kvm_get_sregs(self, call: Call, arg: Any) -> int:
        buf = ffi.buffer(arg)
        buf[0:4] = struct.pack("<I", self.pvr.get(call.fd, self.host.pvr))
        if self.flavour == "booke":
            buf[OFF_E_FEATURES : OFF_E_FEATURES + 4] = struct.pack("<I", BOOKE_FEATURES)
            buf[OFF_E_EPCR : OFF_E_EPCR + 4] = struct.pack("<I", self.epcr.get(call.fd, 0))
        return 0

    def _kvm_set_sregs(self, call: Call, arg: Any) -> int:
        pvr = struct.unpack("<I", call.arg[:4])[0]
        if self.flavour != "pr" and pvr != self.host.pvr:
            raise self._fail(call)
        if self.flavour == "pr" and self.host.book3s32 is False and pvr < 0x330000:  # a 32-bit Book3S PVR
            raise self._fail(call)
        self.pvr[call.fd] = pvr
        features = struct.unpack("<I", call.arg[OFF_E_FEATURES : OFF_E_FEATURES + 4])[0]
        if self.flavour == "booke" and features & SREGS_E_64:
            self.epcr[call.fd] = struct.unpack("<I", call.arg[OFF_E_EPCR : OFF_E_EPCR + 4])[0]
        return 0

    def _kvm_ppc_get_pvinfo(self, call: Call, arg: Any) -> int:
        if not self.host.vm_cap(self.flavour, 57) or not self.host.pvinfo_hcall:
            raise self._fail(call)
        ffi.buffer(arg)[0:20] = struct.pack("<5I", self.host.pvinfo_flags, *self.host.pvinfo_hcall)
        return 0

    def _kvm_ppc_get_smmu_info(self, call: Call, arg: Any) -> int:
        return 0


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
