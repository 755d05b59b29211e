"""The PowerPC lab itself (issue 8): kvmplat's PowerPC code on real KVM-HV and KVM-PR kernels in QEMU's POWER9.

Runs lab/ppc/lab.py (what `make ppc-lab` runs): about 35 s with a warm cache; on a fresh machine the one-off
downloads and KVM-PR kernel build add about 5 minutes. Skips only where qemu-system-ppc64 is absent, which `make`
installs from mk/ppc.debs (so the skip means apt could not install qemu-system-ppc here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-ppc64"


@pytest.mark.skipif(
    shutil.which(QEMU) is None,
    reason=f"{QEMU} not installed: the Debian package qemu-system-ppc (mk/ppc.debs) could not be installed here",
)
def test_ppc_lab_kernels_agree_with_the_agent() -> None:
    """HV: p8/p9 admitted, p10 refused, probe console line, bare metal refused; PR: STRICT levels refused, PVINFO,
    MMIO exit, bare-metal ppc64 and 32-bit Book3S probes run without PAPR."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "lab" / "ppc" / "lab.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    hv, pr = report["hv"], report["pr"]
    assert hv["accel"] == "hv" and hv["compat"] == {"power8": "admitted", "power9": "admitted", "power10": "refused"}
    assert hv["kernel_agrees"] is True and hv["probe_console"] is True
    assert pr["accel"] == "pr" and pr["compat"] and set(pr["compat"].values()) == {"refused"}
    assert len(pr["pvinfo"]) == 4 and pr["kernel_agrees"] is True and pr["mmio_exit"] is True
    # issue 13: bare metal (no PAPR) under PR, 64-bit big-endian and 32-bit Book3S; refused by HV
    assert (pr["bare_metal_ppc64"], pr["bare_metal_ppc32"], hv["bare_metal"]) == (True, True, "refused")
