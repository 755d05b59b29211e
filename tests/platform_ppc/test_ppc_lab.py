"""The lab entry point on this x86 machine: simulated kernels, and the staged file set in cffi ABI mode."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kvmplat.lab.ppc.guest import lab_main, stage
from ppc_cases import GOLDEN


def _lines(host: str) -> list[dict[str, object]]:
    out = io.StringIO()
    assert lab_main(["--simulate", str(GOLDEN / "hosts" / f"{host}.json")], out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_lab_simulated_hv_host_matches_issue_8() -> None:
    """On the POWER9 HV model: power8/9 admitted, power10 refused with EINVAL, PR refused with EINVAL."""
    cases = {d["case"]: d for d in _lines("power9-hv") if "case" in d}
    assert cases["spapr-power8"]["predicted"] == "admitted" and cases["spapr-power8"]["accel"] == "hv"
    assert cases["spapr-power10"]["predicted"] == "refused" and cases["spapr-power10"]["kernel_agrees"] is True
    assert cases["accel-pr"]["kernel"] == [
        {"fd": "kvm", "ioctl": "KVM_CREATE_VM", "request": "0x2000ae01", "ret": None, "errno": 22}
    ]
    assert all(d["kernel_agrees"] is not False for d in cases.values())


def test_lab_simulated_pr_host_reports_pvinfo() -> None:
    """On the POWER9 PR model: pv KVM admitted and the kernel's PVINFO words reported."""
    cases = {d["case"]: d for d in _lines("power9-pr") if "case" in d}
    assert cases["pv-kvm"]["pvinfo"] == ["564b003c", "214d0060", "02000044", "00000060"]
    assert cases["spapr-power8"]["predicted"] == "refused" and cases["spapr-power8"]["kernel_agrees"] is True


def test_lab_staged_tree_runs_in_abi_mode(tmp_path: Path) -> None:
    """The staged files alone (no compiled _kvmc) import and run the lab in cffi ABI mode."""
    files = stage(tmp_path)
    assert not list(tmp_path.rglob("*.so")) and len(files) > 10
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path)}
    host = GOLDEN / "hosts" / "power9-hv.json"
    code = (
        "import sys; from kvmplat.lab.ppc.guest import lab_main; r = lab_main(sys.argv[1:]);"
        "import kvmplat.agent.kvm._kvmc as k; assert k.ABI_MODE; sys.exit(r)"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path[1:]!r}; {code}", "--simulate", str(host)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["summary"]["kernel_agrees"] is True


@pytest.mark.kvm
def test_abi_mode_ioctl_reaches_dev_kvm() -> None:
    """The ABI-mode ioctl helper returns KVM_GET_API_VERSION from /dev/kvm, and -EBADF on a closed fd."""
    from kvmplat.agent.kvm.ffi import abi_mode_module
    from kvmplat.agent.kvm.ioctls import REQUESTS

    lib = abi_mode_module().lib
    fd = os.open("/dev/kvm", os.O_RDWR)
    try:
        assert lib.kp_ioctl_val(fd, REQUESTS["KVM_GET_API_VERSION"], 0) == 12
    finally:
        os.close(fd)
    assert lib.kp_ioctl_val(fd, REQUESTS["KVM_GET_API_VERSION"], 0) == -9


def test_abi_mode_layouts_equal_compiled() -> None:
    """ABI mode's structs have the compiled module's sizes."""
    from kvmplat.agent.kvm._kvmc import ffi
    from kvmplat.agent.kvm.ffi import abi_mode_module

    abi = abi_mode_module().ffi
    for name in ("struct ppc_kvm_sregs", "struct ppc_kvm_regs", "struct kvm_run", "struct kvm_enable_cap"):
        assert abi.sizeof(name) == ffi.sizeof(name)
