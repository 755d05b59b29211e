"""The PowerPC lab (issue 8): kvmplat's own PowerPC code against real KVM-HV and KVM-PR inside an emulated POWER9.

    .venv/bin/python lab/ppc/lab.py [--only hv|pr]      (what `make ppc-lab` runs)

Prepares (ppc_prepare.py), in the cache ($KVMPLAT_PPC_CACHE, default /var/cache/kvmplat/ppc, else
~/.cache/kvmplat/ppc), with progress on stderr:
  apt/       a private apt configuration for Debian bookworm ppc64el (the host's dpkg is never touched)
  debs/      the .debs from `apt-get download`: the stock kernel, linux-source-6.1, busybox-static, python3.11, cffi
  kernel-linux-image-*/   Debian's ppc64el kernel (vmlinux, kvm.ko, kvm-hv.ko), unpacked with `dpkg-deb -x`
  root-KEY/  the guest packages unpacked with `dpkg-deb -x` (never installed), stdlib .pyc compiled on this host
  kernel-pr-KEY/vmlinux   the KVM-PR kernel built from linux-source-6.1 with kvm-pr.config (only when absent)
  initrd.cpio, logs/      the initramfs (rebuilt each run: kvmplat's code is staged fresh) and each boot's console
then boots QEMU's pseries POWER9 twice (HV: stock kernel, cap-nested-hv, radix; PR: built kernel, disable_radix).
In each guest /init (init.sh) runs `python3.11 -m kvmplat.lab.ppc.guest`: it learns the host from the real
/dev/kvm, predicts every case with the agent's resolution, applies the plan and compares, then runs the ppc probe
payload under KVM_RUN. The last stdout line is the JSON report; the exit status is 0 only when every check holds.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kvmplat.lab.common import read_lab_console
from kvmplat.lab.ppc.ppc_prepare import (
    CACHE,
    CONFIGS,
    QEMU,
    LabError,
    apt_update,
    guest_root,
    initramfs,
    pr_kernel,
    progress,
    stock_kernel,
)

BOOT_TIMEOUT = int(os.environ.get("KVMPLAT_PPC_BOOT_TIMEOUT", "600"))

# --- booting and reading the guests' answers ---------------------------------------------------------------------


def boot(config: str, kernel: Path, initrd: Path) -> dict[str, Any]:
    """Boots one configuration; returns the lab's JSON lines, the markers' times and the wall time."""
    _, machine, append = CONFIGS[config]
    cmd = [QEMU, "-M", machine, "-accel", "tcg", "-cpu", "POWER9", "-m", "2G", "-smp", "1", "-nographic"]
    cmd += ["-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd)]
    cmd += ["-append", f"console=hvc0 quiet loglevel=1 {append}".strip()]
    log = CACHE / "logs" / f"{config}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    progress(f"booting {config}: {' '.join(cmd)} (console: {log})")
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=BOOT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        log.write_bytes(e.stdout or b"")
        raise LabError(f"{config} boot did not power off within {BOOT_TIMEOUT} s (console: {log})") from e
    seconds = time.monotonic() - started
    text = done.stdout.decode(errors="replace").replace("\r", "")
    log.write_text(text + done.stderr.decode(errors="replace"))
    result = parse_console(text)
    result["seconds"] = round(seconds, 1)
    progress(f"{config}: powered off after {seconds:.1f} s (lab inside: {result.get('lab_seconds')} s)")
    if not result["lines"]:
        raise LabError(f"{config}: no lab output on the console (see {log}): {text.strip().splitlines()[-3:]}")
    return result


def parse_console(text: str) -> dict[str, Any]:
    """The lab's JSON lines between the KVMPLAT-LAB markers, its exit status and its time inside the guest."""
    c = read_lab_console(text)
    return {"lines": c.objects, "rc": c.rc, "notes": c.notes, "lab_seconds": c.lab_seconds}


# --- the report and the checks ---------------------------------------------------------------------------

LEVELS = ("power8", "power9", "power10")


def _index(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(host, cases by name, probe, summary) from one boot's lines."""
    lines: list[dict[str, Any]] = result["lines"]
    empty: dict[str, Any] = {}
    host = next((d["host"] for d in lines if "host" in d), empty)
    cases = {d["case"]: d for d in lines if "case" in d}
    probe = next((d for d in lines if "probe" in d), empty)
    summary = next((d["summary"] for d in lines if "summary" in d), empty)
    return host, cases, probe, summary


def _verdicts(cases: dict[str, Any]) -> dict[str, str]:
    return {lv: cases.get(f"spapr-{lv}", {}).get("predicted", "missing") for lv in LEVELS}


def report_hv(result: dict[str, Any]) -> dict[str, Any]:
    """The HV half of the report."""
    _, cases, probe, summary = _index(result)
    return {
        "accel": cases.get("accel-auto", {}).get("accel"),
        "compat": _verdicts(cases),
        "bare_metal": cases.get("bare-metal-ppc64", {}).get("predicted", "missing"),
        "kernel_agrees": summary.get("kernel_agrees") is True and result["rc"] == 0,
        "probe_console": probe.get("probe_console") is True,
        "seconds": result["seconds"],
    }


def report_pr(result: dict[str, Any]) -> dict[str, Any]:
    """The PR half of the report."""
    _, cases, probe, summary = _index(result)
    return {
        "accel": cases.get("accel-auto", {}).get("accel"),
        "compat": _verdicts(cases),
        "pvinfo": cases.get("pv-kvm", {}).get("pvinfo"),
        "bare_metal_ppc64": _bare(cases, "bare-metal-ppc64"),
        "bare_metal_ppc32": _bare(cases, "bare-metal-ppc32"),
        "kernel_agrees": summary.get("kernel_agrees") is True and result["rc"] == 0,
        "mmio_exit": probe.get("mmio_exit") is True,
        "seconds": result["seconds"],
    }


def _bare(cases: dict[str, Any], name: str) -> bool | str:
    """True when the agent admitted a bare-metal case and its probe ran without PAPR; else what happened."""
    predicted = str(cases.get(name, {}).get("predicted", "missing"))
    if predicted != "admitted":
        return predicted
    return cases.get(f"{name}-run", {}).get("ran") is True


def check(config: str, result: dict[str, Any]) -> list[str]:
    """What issue 8 item 3/4 expects of this configuration and did not happen (empty when all held)."""
    host, cases, probe, _ = _index(result)
    own, other = config, {"hv": "pr", "pr": "hv"}[config]
    want = {
        f"host learnt from /dev/kvm offers {own} only": host.get("accels") == [own],
        f"AUTO runs {own}": cases.get("accel-auto", {}).get("accel") == own,
        f"accel {own.upper()} runs {own}": cases.get(f"accel-{own}", {}).get("accel") == own,
        f"accel {other.upper()} refused, the kernel's EINVAL confirms": _refused_confirmed(cases.get(f"accel-{other}")),
        "power10 refused, the kernel's EINVAL confirms": _refused_confirmed(cases.get("spapr-power10")),
        "every prediction agrees with the kernel": all(c.get("kernel_agrees") is not False for c in cases.values()),
    }
    if config == "hv":
        want["power8 and power9 admitted (ARCH_COMPAT set and read back)"] = (
            all(cases.get(f"spapr-{lv}", {}).get("kernel_agrees") is True for lv in ("power8", "power9"))
            and _verdicts(cases)["power8"] == _verdicts(cases)["power9"] == "admitted"
        )
        want["H_PUT_TERM_CHAR console line starts with kvmplat-probe"] = probe.get("probe_console") is True
        want["the probe's hypercalls reached userspace"] = bool(probe.get("hcalls"))
        want["BARE_METAL refused (book3s_hv runs only PAPR), KVM_VM_PPC_PR's EINVAL confirms"] = all(
            _refused_confirmed(cases.get(f"bare-metal-{w}")) for w in ("ppc64", "ppc32")
        )
    else:
        want["STRICT power8/power9 refused, the kernel's EINVAL confirms"] = all(
            _refused_confirmed(cases.get(f"spapr-{lv}")) for lv in ("power8", "power9")
        )
        be = cases.get("spapr-power8-best-effort", {})
        want["BEST_EFFORT power8 admitted with a note"] = be.get("predicted") == "admitted" and any(
            "BEST_EFFORT" in n for n in be.get("notes", [])
        )
        want["pv KVM reports KVM_PPC_GET_PVINFO's 4 words"] = len(cases.get("pv-kvm", {}).get("pvinfo") or []) == 4
        want["the probe's MMIO store exited to userspace"] = probe.get("mmio_exit") is True
        want["BARE_METAL PPC64 admitted and its probe stored without PAPR"] = _bare(cases, "bare-metal-ppc64") is True
        want["BARE_METAL PPC (32-bit Book3S) admitted and its probe ran with MSR.SF clear"] = (
            _bare(cases, "bare-metal-ppc32") is True
        )
    return [f"{config}: {what}" for what, held in want.items() if not held]


def _refused_confirmed(case: dict[str, Any] | None) -> bool:
    return case is not None and case.get("predicted") == "refused" and case.get("kernel_agrees") is True


def main(argv: list[str] | None = None) -> int:
    """Prepares, boots the configurations, prints the report as the last stdout line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(CONFIGS), help="boot one configuration")
    args = p.parse_args(argv)
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        if not _try_lock(lock):
            progress(f"waiting for another ppc-lab run using {CACHE}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _run_lab(args.only, started)


def _try_lock(lock: Any) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _run_lab(only: str | None, started: float) -> int:
    """The lab under the cache lock: prepare, boot, check, report."""
    try:
        if shutil.which(QEMU) is None:
            raise LabError(f"{QEMU} not found: install Debian's qemu-system-ppc (make deps does)")
        apt_update()
        configs = [c for c in CONFIGS if only in (None, c)]
        stock, stock_root = stock_kernel()
        kernels = {"stock": stock, **({"pr": pr_kernel()} if "pr" in configs else {})}
        initrd = initramfs(guest_root(), stock_root)
        results = {c: boot(c, kernels[CONFIGS[c][0]], initrd) for c in configs}
    except LabError as e:
        progress(f"FAILED: {e}")
        return 2
    failed = [f for c, r in results.items() for f in check(c, r)]
    for c, r in results.items():
        probe = _index(r)[2]
        if probe.get("console"):
            progress(f"{c}: the ppc probe's H_PUT_TERM_CHAR console line: {probe['console'].rstrip()}")
        for n in r["notes"]:
            progress(f"{c}: {n}")
    for f in failed:
        progress(f"FAILED: {f}")
    report: dict[str, Any] = {}
    if "hv" in results:
        report["hv"] = report_hv(results["hv"])
    if "pr" in results:
        report["pr"] = report_pr(results["pr"])
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
