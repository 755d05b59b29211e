"""The simulated PowerPC kernel is held to what the real kernels answered in the lab (tests/golden/ppc/lab/*.console,
recorded by `make ppc-lab`): for the host each console recorded, every ARCH_COMPAT value a case set is accepted or
refused by the simulator exactly as the kernel did. The simulator's facts are its own (sim.HV_ARCH_COMPAT), not the
resolver's level table, so a wrong prediction by the resolver cannot be mirrored by the simulator."""

from __future__ import annotations

import errno
import json
import struct

import pytest
from kvmplat.agent.errors import KvmError
from kvmplat.agent.kvm.ioctls import PPC64
from kvmplat.agent.platform.ppc import PpcHost
from kvmplat.agent.platform.ppc_levels import level_by_name
from kvmplat.lab.ppc.apply import Call
from kvmplat.lab.ppc.guest import DEFAULT_CASES
from kvmplat.lab.ppc.plan import KVM_REG_PPC_ARCH_COMPAT, VM_TYPES
from kvmplat.lab.ppc.sim import SimPpcKernel
from ppc_cases import GOLDEN

REQUESTS = {c["name"]: c["request"] for c in DEFAULT_CASES}


def _recorded(flavour: str) -> tuple[PpcHost, list[dict[str, object]]]:
    lines = [json.loads(x) for x in (GOLDEN / "lab" / f"{flavour}.console").read_text().splitlines() if x[:1] == "{"]
    host = PpcHost.from_json(next(x["host"] for x in lines if "host" in x))
    return host, [x for x in lines if "case" in x]


def _kernel_said(case: dict[str, object]) -> int | None:
    """errno of the recorded KVM_SET_ONE_REG (0: accepted), None when the case set no ARCH_COMPAT."""
    if "predicted" not in case or str(case["case"]) not in REQUESTS:  # a probe run, not a prediction
        return None
    if case["predicted"] == "admitted":
        raw = int(str(case.get("compat_raw", "0")), 16)
        return 0 if raw >> 24 == 0x0F and case["kernel_agrees"] else None
    steps = case["kernel"]
    assert isinstance(steps, list)
    last = steps[-1] if steps else {}
    return int(last["errno"]) if last.get("ioctl") == "KVM_SET_ONE_REG" else None


def _sim_set_compat(host: PpcHost, flavour: str, value: int) -> int:
    sim = SimPpcKernel(host)
    sim(Call("kvm", "KVM_CREATE_VM", PPC64["KVM_CREATE_VM"], VM_TYPES[flavour], b""))
    sim(Call("vm", "KVM_CREATE_VCPU", PPC64["KVM_CREATE_VCPU"], 0, b""))
    one_reg = struct.pack("<QQ", KVM_REG_PPC_ARCH_COMPAT, 0)
    try:
        sim(Call("vcpu0", "KVM_SET_ONE_REG", PPC64["KVM_SET_ONE_REG"], None, one_reg, struct.pack("<I", value)))
    except KvmError as e:
        return e.errno
    return 0


@pytest.mark.parametrize("flavour", ["hv", "pr"])
def test_the_simulator_answers_arch_compat_as_the_recorded_kernel(flavour: str) -> None:
    host, cases = _recorded(flavour)
    checked = 0
    for case in cases:
        said = _kernel_said(case)
        if said is None:
            continue
        level = level_by_name(str(REQUESTS[str(case["case"])].get("compat", "")))
        assert level is not None
        assert _sim_set_compat(host, flavour, level.logical_pvr) == said, (flavour, case["case"])
        checked += 1
    assert checked >= 3  # hv: power8 and power9 accepted, power10 refused; pr: all three refused


def test_the_recorded_facts_are_what_the_simulator_encodes() -> None:
    hv, _ = _recorded("hv")
    assert _sim_set_compat(hv, "hv", 0x0F000006) == errno.EINVAL  # power10 on the POWER9 lab kernel
    assert _sim_set_compat(hv, "hv", 0x0F000005) == 0
    assert _sim_set_compat(hv, "hv", 0x0F000007) == errno.EINVAL  # no such logical PVR
