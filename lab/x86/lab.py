"""The x86 lab (issue 12): kvmplat on a real KVM, Debian's kvm-amd inside QEMU's TCG (nested SVM), in one boot.

    .venv/bin/python lab/x86/lab.py [--skip demo,boot]      (what `make x86-lab` runs)

Prepares (x86_prepare.py), with progress on stderr: the Linux guest image (`kvmplat image build`: Debian's amd64
kernel and busybox-static by `apt-get download`, shared with `make test`), the KVM and virtio-9p modules out of the
same kernel package and the lab's initramfs in $KVMPLAT_X86_CACHE (default /var/cache/kvmplat/x86, else
~/.cache/kvmplat/x86), with each boot's console in logs/. Then boots `qemu-system-x86_64 -accel tcg -M q35 -cpu max
-smp 2` on that kernel, the host's / shared read-only over virtio-9p; its /init (init.sh) loads
`irqbypass kvm ccp kvm-amd`, builds a root of the host's usr, etc, Python, this checkout and its .venv, and runs
inside.py against the guest's /dev/kvm. The last stdout line is the JSON report; exit 0 only when every check held.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmplat.lab.common import read_lab_console
from kvmplat.lab.x86.x86_prepare import CACHE, QEMU, REPO, LabError, prepare, progress, shared_paths

BOOT_TIMEOUT = int(os.environ.get("KVMPLAT_X86_BOOT_TIMEOUT", "1800"))
# A frozen L1 kernel (QEMU alive, no lab output; its soft-lockup warnings may still print) is given up on after this
# long without a lab line. The longest silence between lab lines measured in a healthy run: 40 s; 10 min is generous.
SILENCE_TIMEOUT = int(os.environ.get("KVMPLAT_X86_SILENCE_TIMEOUT", "600"))
KERNEL_LINE = re.compile(r"^\s*\[\s*\d+\.\d+\]")
STEPS = ("caps", "demo", "guest_view", "linux", "boot")  # inside.py's, in its order
L1_BOOTS = 3  # boots when the emulated L1 kernel dies under the lab (see boot_until_done)
GUEST_VIEWS = ("BARE_METAL", "KVM", "HYPERV", "KVM+HYPERV", "x86-64-v1", "x86-64-v2", "x86-64-v3", "best_effort-v1")
LEVELS = ("x86-64-v1", "x86-64-v2", "x86-64-v3", "x86-64-v4")
LINUX = ("init_1vcpu", "init_2vcpu", "cpuinfo_matches", "hypervisor_line_matches")


def qemu_command(img: dict[str, str], initrd: Path, skip: str) -> list[str]:
    """QEMU's TCG q35 with every CPU feature it emulates (svm, npt, all of x86-64-v3), the host's / over 9p."""
    binds = ":".join(shared_paths(img))
    images = str(Path(img["kernel"]).parents[1])
    append = (
        f"console=ttyS0 quiet loglevel=1 panic=-1 kvmplat.repo={REPO} kvmplat.binds={binds} kvmplat.images={images}"
    )
    if skip:
        append += f" kvmplat.skip={skip}"
    if os.environ.get("KVMPLAT_X86_APPEND"):  # more for init.sh while iterating, e.g. kvmplat.extra=bootdiff
        append += " " + os.environ["KVMPLAT_X86_APPEND"]
    cmd = [QEMU, "-accel", "tcg", "-M", "q35", "-cpu", "max", "-smp", "2", "-m", "4096", "-nographic", "-no-reboot"]
    cmd += ["-kernel", img["kernel"], "-initrd", str(initrd), "-append", append]
    cmd += ["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"]
    return cmd


@dataclass
class Watchdog:
    """When to give up on one boot of the lab: past `total_s` in all ("deadline"), or `silence_s` without a lab line
    ("silent": the inside steps' notes, JSON and markers count; the kernel's own messages, such as the soft-lockup
    warnings a frozen L1 kernel keeps printing, do not). `longest` is the longest silence seen so far."""

    started: float
    silence_s: float = SILENCE_TIMEOUT
    total_s: float = BOOT_TIMEOUT
    last: float = field(init=False)
    longest: float = 0.0
    fired: str | None = None  # the verdict that ended the boot, if one did

    def __post_init__(self) -> None:
        self.last = self.started

    def line(self, text: str, now: float) -> None:
        """A console line arrived at `now`."""
        if text.strip() and not KERNEL_LINE.match(text):
            self.longest = max(self.longest, now - self.last)
            self.last = now

    def verdict(self, now: float) -> str | None:
        """None while the boot may go on, else why it must end."""
        if now - self.started > self.total_s:
            return "deadline"
        if now - self.last > self.silence_s:
            return "silent"
        return None


def boot(cmd: list[str]) -> dict[str, Any]:
    """Boots the lab, showing its notes as they come; the inside steps' JSON lines and the markers' times."""
    log = CACHE / "logs" / "lab.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    progress(f"booting: {' '.join(cmd)} (console: {log})")
    started = time.monotonic()
    dog = Watchdog(started)
    text = _stream(cmd, log, dog)
    result = parse_console(text)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["frozen"] = dog.fired == "silent"
    if result["frozen"]:
        progress(f"no lab output for {dog.silence_s:g} s: the L1 kernel froze; QEMU killed")
    else:
        progress(f"powered off after {result['seconds']} s (inside: {result.get('lab_seconds')} s)")
    progress(f"longest console silence between lab lines: {dog.longest:.0f} s")
    if not result["steps"] and result["ended"]:
        raise LabError(f"no lab output on the console (see {log}): {text.strip().splitlines()[-5:]}")
    return result


def boot_until_done(img: dict[str, str], initrd: Path, skip: str) -> dict[str, Any]:
    """Boots the lab; when the L1 kernel dies mid-way (QEMU 7.2's TCG nested SVM now and then loses the L1's GS
    base: "stack guard page was hit" in exc_page_fault, README) or freezes (Watchdog), boots again for the steps not
    reported yet, L1_BOOTS boots in all."""
    result: dict[str, Any] = {"steps": {}, "notes": [], "lab_seconds": None}
    for attempt in range(1, L1_BOOTS + 1):
        done = ",".join([*filter(None, skip.split(",")), *result["steps"]])
        try:
            this = boot(qemu_command(img, initrd, done))
        except LabError as e:
            if attempt == L1_BOOTS or not result["steps"]:
                raise
            this = {"steps": {}, "notes": [str(e)], "lab_seconds": None, "ended": False}
        result["steps"].update({k: v for k, v in this["steps"].items() if not v.get("skipped")})
        result["notes"] += this["notes"]
        result["lab_seconds"] = this["lab_seconds"]
        if this.get("ended", True) or set(STEPS) <= set(result["steps"]):
            return result
        how = "froze" if this.get("frozen") else "died"
        progress(f"the L1 kernel {how} before the lab ended (console: logs/lab.log); boot {attempt + 1}")
        (CACHE / "logs" / "lab.log").rename(CACHE / "logs" / f"lab-died-{attempt}.log")
    return result


def _stream(cmd: list[str], log: Path, dog: Watchdog) -> str:
    """QEMU's console, written to `log` and its lab lines echoed as progress; QEMU killed when `dog` says the L1
    kernel froze (the text so far is returned), LabError on the deadline."""
    out, pending = [], b""
    with (
        log.open("wb") as f,
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc,
    ):
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            why = dog.fired = dog.verdict(time.monotonic())
            if why == "deadline":
                proc.kill()
                raise LabError(f"the lab did not power off within {dog.total_s:g} s (console: {log})")
            if why == "silent":
                proc.kill()
                break
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            f.write(chunk)
            f.flush()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").replace("\r", "")
                out.append(line)
                dog.line(line, time.monotonic())
                if "KVMPLAT-LAB-" in line or line.startswith("{"):
                    progress(f"guest: {line[:300]}")
        proc.wait()
    return "\n".join([*out, pending.decode(errors="replace")])


def parse_console(text: str) -> dict[str, Any]:
    """The steps' JSON lines between the KVMPLAT-LAB markers, the notes, whether the lab ended and its time inside."""
    c = read_lab_console(text)
    steps: dict[str, Any] = {}
    for obj in c.objects:
        steps.update(obj)
    return {"steps": steps, "notes": c.notes, "lab_seconds": c.lab_seconds, "ended": c.ended}


def report(steps: dict[str, Any], started: float) -> dict[str, Any]:
    """The issue's report from the inside steps."""
    caps, views = steps.get("caps", {}), steps.get("guest_view", {}).get("cases", {})
    lx, bt = steps.get("linux", {}), steps.get("boot", {})
    ours, qemu = bt.get("ours_ms"), bt.get("qemu_microvm_ms")
    return {
        "accel": caps.get("accel"),
        "levels": {lv: caps.get("levels", {}).get(lv, "missing") for lv in LEVELS},
        "demo": steps.get("demo", {}).get("ok") is True,
        "guest_view_matches": {k: views.get(k, {}).get("ok") is True for k in GUEST_VIEWS},
        "linux": {k: lx.get(k) is True for k in LINUX},
        "boot_ms": {"ours": ours, "qemu_microvm": qemu},
        "boot_ratio_vs_qemu_microvm": bt.get("ratio_vs_qemu_microvm"),
        "seconds": round(time.monotonic() - started, 1),
    }


def failures(r: dict[str, Any], steps: dict[str, Any]) -> list[str]:
    """What the issue expects and did not happen (empty when all held)."""
    caps = steps.get("caps", {})
    v4_missing = caps.get("missing", {}).get("x86-64-v4", [])
    want = {
        "accel is kvm-amd": r["accel"] == "kvm-amd",
        "x86-64-v1..v3 admitted STRICT, v4 refused": r["levels"]
        == {"x86-64-v1": "admitted", "x86-64-v2": "admitted", "x86-64-v3": "admitted", "x86-64-v4": "refused"},
        "v4's refusal names the avx512 features": bool(v4_missing) and all("avx512" in f for f in v4_missing),
        "pv KVM and HYPERV offered": {"KVM", "HYPERV"} <= set(caps.get("pv", [])),
        "kvmplat demo passes": r["demo"],
        "the boot ratio was measured": isinstance(r["boot_ratio_vs_qemu_microvm"], (int, float)),
    }
    want |= {f"guest view {k}": v for k, v in r["guest_view_matches"].items()}
    want |= {f"linux {k}": v for k, v in r["linux"].items()}
    want["every Linux-step test passed"] = steps.get("linux", {}).get("ok") is True
    return [what for what, held in want.items() if not held]


def _explain(steps: dict[str, Any], notes: list[str]) -> None:
    """Progress lines on what went wrong inside."""
    for n in notes:
        progress(n)
    for name, case in steps.get("guest_view", {}).get("cases", {}).items():
        for d in case.get("table_differs", []) + case.get("promises_broken", []):
            progress(f"guest view {name}: {d}")
    for key in ("caps", "demo", "linux", "boot"):
        step = steps.get(key, {})
        if step.get("ok") is False or step.get("error"):
            progress(f"{key}: {json.dumps({k: v for k, v in step.items() if k != 'tests'})[:3000]}")


def main(argv: list[str] | None = None) -> int:
    """Prepares, boots, prints the report as the last stdout line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip", default="", help="inside steps to leave out while iterating: caps,demo,...")
    args = p.parse_args(argv)
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another x86-lab run using {CACHE}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            img, initrd = prepare()
            result = boot_until_done(img, initrd, args.skip)
        except LabError as e:
            progress(f"FAILED: {e}")
            return 2
    steps = result["steps"]
    r = report(steps, started)
    failed = failures(r, steps)
    _explain(steps, result["notes"])
    for f in failed:
        progress(f"FAILED: {f}")
    print(json.dumps(r), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
