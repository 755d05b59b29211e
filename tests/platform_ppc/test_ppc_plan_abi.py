"""ABI tests of the PowerPC ioctl plans: exact request numbers (powerpc `_IOC` encoding), argument bytes and order,
run through the recording fd layer. They check the ABI kvmplat speaks, not a running guest (no PowerPC KVM here;
the lab of issue 8 runs the same plans on real kernels)."""

from __future__ import annotations

import errno
import struct

from kvmplat.agent.errors import PlatformRefused
from kvmplat.agent.platform.model import Accel
from kvmplat.agent.platform.ppc import resolve_ppc
from kvmplat.lab.ppc.apply import RecordingFds, apply_ppc, plan_ok
from kvmplat.lab.ppc.plan import plan_ppc, plan_refusal_probe, ppc_vm_type
from kvmplat.lab.ppc.sim import sim_fds
from ppc_cases import CASES, HOSTS

CHECK, CREATE_VM, CREATE_VCPU = 0x2000AE03, 0x2000AE01, 0x2000AE41
ENABLE_CAP, SET_ONE_REG, GET_ONE_REG = 0x8068AEA3, 0x8010AEAC, 0x8010AEAB
GET_SREGS, SET_SREGS, GET_PVINFO = 0x44D0AE83, 0x84D0AE84, 0x8080AEA1
ARCH_COMPAT = struct.pack("<Q", 0x10200000000000B7)
PAPR_CAP = struct.pack("<II", 68, 0) + bytes(96)


def _record(case: str, host: str, vcpus: int = 2) -> RecordingFds:
    req = CASES[case]
    eff = resolve_ppc(req, HOSTS[host])
    plan = plan_ppc(eff, vcpus, ppc_vm_type(req.accel, eff, HOSTS[host]))
    fds = sim_fds(HOSTS[host])
    assert plan_ok(apply_ppc(plan, fds), plan)
    return fds


def _calls(fds: RecordingFds) -> list[tuple[str, int, object]]:
    return [(c.fd, c.request, c.value) for c in fds.calls]


def test_abi_spapr_power8_plan_bytes_on_hv() -> None:
    """SPAPR power8 on POWER9 HV: probes, CREATE_VM(0), flavour check, then per vCPU PAPR and ARCH_COMPAT."""
    fds = _record("spapr-power8", "power9-hv")
    assert _calls(fds) == [
        ("kvm", CHECK, 105),
        ("kvm", CHECK, 68),
        ("kvm", CHECK, 70),
        ("kvm", CREATE_VM, 0),
        ("vm", CHECK, 57),
        ("vm", CREATE_VCPU, 0),
        ("vcpu0", ENABLE_CAP, None),
        ("vcpu0", SET_ONE_REG, None),
        ("vcpu0", GET_ONE_REG, None),
        ("vm", CREATE_VCPU, 1),
        ("vcpu1", ENABLE_CAP, None),
        ("vcpu1", SET_ONE_REG, None),
        ("vcpu1", GET_ONE_REG, None),
    ]
    enable, set_reg, get_reg = fds.calls[6], fds.calls[7], fds.calls[8]
    assert enable.arg == PAPR_CAP and len(enable.arg) == 104
    assert set_reg.arg[:8] == ARCH_COMPAT and set_reg.reg == struct.pack("<I", 0x0F000004)
    assert get_reg.arg[:8] == ARCH_COMPAT and get_reg.reg == bytes(4)


def test_abi_forced_hv_and_pr_use_vm_types_1_and_2() -> None:
    """accel HV → KVM_CREATE_VM(1); PR → KVM_CREATE_VM(2); AUTO on the default flavour → 0."""
    assert ("kvm", CREATE_VM, 1) in _calls(_record("spapr-power8-hv", "power8-hv-pr"))
    assert ("kvm", CREATE_VM, 2) in _calls(_record("spapr-pr", "power8-hv-pr"))
    assert ("kvm", CREATE_VM, 0) in _calls(_record("default", "power9-pr"))
    # AUTO that must run on PR although the kernel default is HV forces type 2.
    assert ("kvm", CREATE_VM, 2) in _calls(_record("bare-metal", "power8-hv-pr"))


def test_abi_pr_pv_kvm_pvinfo_and_sregs_pvr() -> None:
    """PR with pv KVM: GET_PVINFO on the VM fd (128-byte struct); the PVR pinned via GET/SET/GET_SREGS."""
    fds = _record("spapr-pv-kvm", "power9-pr", vcpus=1)
    names = [(c.fd, c.request) for c in fds.calls]
    assert names[3:] == [
        ("vm", CHECK),
        ("vm", GET_PVINFO),
        ("vm", CREATE_VCPU),
        ("vcpu0", ENABLE_CAP),
        ("vcpu0", GET_SREGS),
        ("vcpu0", SET_SREGS),
        ("vcpu0", GET_SREGS),
    ]
    assert len(fds.calls[4].arg) == 128 and len(fds.calls[8].arg) == 1232
    assert fds.calls[8].arg[:4] == struct.pack("<I", 0x004E1200)


def test_abi_book3s_32bit_pr_sets_sregs_pvr_without_papr() -> None:
    """BARE_METAL 32-bit on PR: no PAPR cap, kvm_sregs.pvr = 0x000c0209 (PowerPC 7400)."""
    fds = _record("bare-metal-32bit-pv-kvm", "power9-pr", vcpus=1)
    assert ENABLE_CAP not in [c.request for c in fds.calls]
    set_sregs = next(c for c in fds.calls if c.request == SET_SREGS)
    assert set_sregs.arg[:4] == struct.pack("<I", 0x000C0209) and len(set_sregs.arg) == 1232


def test_abi_booke_64bit_sets_epcr_icm_through_e64_feature() -> None:
    """BookE on e5500: BOOKE_SREGS probed; SET_SREGS with u.e.features = E_64 and u.e.epcr = ICM."""
    fds = _record("booke", "e5500-booke", vcpus=1)
    assert ("kvm", CHECK, 62) in _calls(fds)
    set_sregs = next(c for c in fds.calls if c.request == SET_SREGS)
    assert struct.unpack_from("<I", set_sregs.arg, 264)[0] == 1 << 2  # u.e.features
    assert struct.unpack_from("<I", set_sregs.arg, 452)[0] == 0x02000000  # u.e.epcr
    fds32 = _record("booke-32bit-pv-kvm", "e5500-booke", vcpus=1)
    set32 = next(c for c in fds32.calls if c.request == SET_SREGS)
    assert struct.unpack_from("<I", set32.arg, 452)[0] == 0


def _probe(case: str, host: str) -> list[tuple[str, int, object]]:
    req = CASES[case]
    try:
        resolve_ppc(req, HOSTS[host])
    except PlatformRefused as e:
        steps = plan_refusal_probe(req, HOSTS[host], e)
    fds = sim_fds(HOSTS[host])
    results = apply_ppc(steps, fds)
    assert results and all(r.ok for r in results) and results[-1].errno == errno.EINVAL
    return _calls(fds)


def test_abi_refusal_probes_expect_einval() -> None:
    """power10 on POWER9 HV, STRICT power8 on PR, HV on PR and PR on HV: each confirmed by one EINVAL."""
    assert _probe("spapr-power10", "power9-hv")[-1] == ("vcpu0", SET_ONE_REG, None)
    assert _probe("spapr-power8", "power9-pr")[0] == ("kvm", CREATE_VM, 2)
    assert _probe("accel-hv", "power9-pr") == [("kvm", CREATE_VM, 1)]
    assert _probe("accel-pr", "power9-hv") == [("kvm", CREATE_VM, 2)]


def test_abi_recording_reads_one_reg_through_its_address() -> None:
    """kvm_one_reg.addr points at the register's bytes (the recorder reads them there, as the kernel does)."""
    fds = _record("spapr-power9", "power9-hv", vcpus=1)
    set_reg = next(c for c in fds.calls if c.request == SET_ONE_REG)
    assert set_reg.reg == struct.pack("<I", 0x0F000005)
    assert Accel.AUTO is CASES["spapr-power9"].accel
