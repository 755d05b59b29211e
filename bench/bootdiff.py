"""Where a Linux boot spends its time: kvmplat beside QEMU microvm, phase by phase and exit by exit (hardware KVM).

    bench/bootdiff.py [--runs N] [--extra 'CMDLINE OPTIONS']        (the x86 lab runs it: lab.py --only bootdiff)

Boots the guest image's kernel to its /init in both, with the same kernel, initramfs and command line (the image's
own, `quiet`, plus `printk.time=1` so the kernel log carries timestamps; `--extra` adds more to both). An overlay
initramfs replaces the image's /init with one that prints `KVMPLAT-INIT`, then the kernel log, then an end marker.
While each guest boots, the host's tracefs (kvm:kvm_exit, kvm_pio, kvm_mmio, kvm_msr; needs root) counts its exits.
Prints per contender: time to KVMPLAT-INIT, the console bytes before it, exits by reason, the busiest ports, MMIO
pages and MSRs, and the kernel log's timestamps at landmark lines side by side. Last line: JSON of the same.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot import MEMORY_MIB, QEMU, image, say

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("kvm/kvm_exit", "kvm/kvm_pio", "kvm/kvm_mmio", "kvm/kvm_msr")
END = "KVMPLAT-DMESG-END"
TIMEOUT_S = 120.0
OVERLAY_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
echo KVMPLAT-INIT
dmesg
echo {END}
mknod /dev/port c 1 4 && echo -n x | dd of=/dev/port bs=1 seek=244 2>/dev/null
reboot -f
"""
LANDMARKS = (
    "Linux version",
    "tsc: Detected",
    "ACPI",
    "Memory:",
    "Calibrating delay",
    "smpboot: CPU0",
    "smp: Brought up",
    "devtmpfs: initialized",
    "clocksource: Switched to",
    "Unpacking initramfs",
    "Freeing initrd memory",
    "Serial: 8250",
    "serial8250",
    "i8042",
    "rtc_cmos",
    "Freeing unused kernel",
    "Run /init",
)


def overlay_initrd(base: str, out: Path) -> Path:
    """The image's initramfs followed by a newc archive whose /init dumps the kernel log (later members win)."""
    from kvmplat.client.guest_image import CpioEntry, cpio_newc

    raw = Path(base).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    raw += b"\0" * (-len(raw) % 4)
    out.write_bytes(raw + cpio_newc([CpioEntry("init", 0o100755, OVERLAY_INIT.encode())]))
    return out


class Trace:
    """The host's kvm trace events, recorded while one guest boots."""

    def __enter__(self) -> Trace:
        if not (TRACEFS / "events").is_dir():
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=False)
        self._write("tracing_on", "0")
        self._write("buffer_size_kb", "65536")
        self._write("options/overwrite", "0")  # a full buffer keeps the boot's start, not an endless tail
        self._write("trace", "")
        for ev in EVENTS:
            self._write(f"events/{ev}/enable", "1")
        self._write("tracing_on", "1")
        return self

    def __exit__(self, *exc: object) -> None:
        self._write("tracing_on", "0")
        for ev in EVENTS:
            self._write(f"events/{ev}/enable", "0")

    def text(self) -> str:
        """The recorded events (call after the block)."""
        try:
            return (TRACEFS / "trace").read_text(errors="replace")
        except OSError as e:
            return f"# no trace: {e}"

    @staticmethod
    def _write(name: str, value: str) -> None:
        with contextlib.suppress(OSError):
            (TRACEFS / name).write_text(value)


def summarize(trace: str) -> dict[str, Any]:
    """Exit counts by reason, port, MMIO page and MSR from the trace text."""
    reasons: collections.Counter[str] = collections.Counter()
    ports: collections.Counter[str] = collections.Counter()
    mmio: collections.Counter[str] = collections.Counter()
    msrs: collections.Counter[str] = collections.Counter()
    first = last = None
    timeline: collections.Counter[tuple[int, str]] = collections.Counter()
    npf_pages: collections.Counter[int] = collections.Counter()
    for line in trace.splitlines():
        m = re.search(r"\s(\d+\.\d+): (kvm_\w+): (.*)", line)
        if not m:
            continue
        ts, ev, rest = float(m[1]), m[2], m[3]
        first, last = first if first is not None else ts, ts
        if ev == "kvm_exit":
            r = re.search(r"reason (\S+)", rest)
            reasons[r[1] if r else rest[:30]] += 1
            timeline[(int(ts - first), r[1] if r else "?")] += 1
            g = re.search(r"info2 (0x[0-9a-f]+)", rest)
            if r and r[1] == "npf" and g:
                npf_pages[int(g[1], 16) >> 12] += 1
        elif ev == "kvm_pio":
            p = re.search(r"pio_(read|write) at (0x[0-9a-f]+)", rest)
            ports[f"{p[1]} {p[2]}" if p else rest[:30]] += 1
        elif ev == "kvm_mmio":
            p = re.search(r"mmio (\w+).*gpa (0x[0-9a-f]+)", rest)
            mmio[f"{p[1]} {int(p[2], 16) & ~0xFFF:#x}" if p else rest[:30]] += 1
        elif ev == "kvm_msr":
            msrs[rest[:24]] += 1
    span = round(last - first, 3) if first is not None and last is not None else None
    top = {"ports": ports.most_common(20), "mmio": mmio.most_common(10), "msrs": msrs.most_common(15)}
    seconds: dict[int, dict[str, int]] = collections.defaultdict(dict)
    for (sec, why), n in sorted(timeline.items()):
        if n >= 20:
            seconds[sec][why] = n
    npf = {"pages": len(npf_pages), "top": [(f"{p << 12:#x}", n) for p, n in npf_pages.most_common(3)]}
    return {
        "exits": sum(reasons.values()),
        "span_s": span,
        "reasons": reasons.most_common(),
        **top,
        "npf": npf,
        "per_second": seconds,
    }


def run_qemu(img: dict[str, str], initrd: Path, cmdline: str) -> tuple[float, str]:
    """(ms to KVMPLAT-INIT, console text to the end marker) of QEMU microvm."""
    cmd = [QEMU, "-enable-kvm", "-cpu", "max", "-M", "microvm", "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot"]
    cmd += ["-display", "none", "-monitor", "none", "-serial", "stdio", "-kernel", img["kernel"]]
    cmd += ["-initrd", str(initrd), "-append", cmdline]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    seen, at = b"", None
    try:
        while time.monotonic() - t0 < TIMEOUT_S and END.encode() not in seen:
            if not select.select([proc.stdout], [], [], 0.5)[0]:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            if at is None and b"KVMPLAT-INIT" in seen:
                at = (time.monotonic() - t0) * 1000
    finally:
        proc.kill()
        proc.wait()
    return at or -1.0, seen.decode(errors="replace")


def run_ours(address: str, img: dict[str, str], initrd: Path, cmdline: str, n: int) -> tuple[float, str]:
    """(ms to KVMPLAT-INIT, console text to the end marker) of kvmplat, as bench/boot.py creates its VM."""
    from kvmplat.client.agent import Client
    from kvmplat.v1 import agent_pb2 as pb

    name = f"diff{n}"
    platform = pb.PlatformSpec(pv=[pb.KVM])
    if os.environ.get("KVMPLAT_BOOTDIFF_BARE"):  # BARE_METAL STRICT x86-64-v2, as the hardware tests' first case
        platform = pb.PlatformSpec(abi=pb.BARE_METAL, compat="x86-64-v2")
    spec = pb.VmSpec(name=name, vcpus=1, memory_mib=MEMORY_MIB, platform=platform)
    spec.boot.CopyFrom(pb.BootSpec(kernel=img["kernel"], initrd=str(initrd), cmdline=cmdline))
    text, at = [], None
    with Client(address, timeout=30.0) as c:
        stream = c.watch_events(vm="", follow=True)
        timer = threading.Timer(TIMEOUT_S, stream.cancel)
        timer.start()
        try:
            t0 = time.monotonic()
            c.create_vm(spec, start=True)
            for ev in stream:
                if ev.vm == name and ev.WhichOneof("kind") == "console":
                    text.append(ev.console.text)
                    if at is None and "KVMPLAT-INIT" in ev.console.text:
                        at = (time.monotonic() - t0) * 1000
                    if END in ev.console.text or time.monotonic() - t0 > TIMEOUT_S:
                        break
        except Exception as e:  # the stream cancelled by the timer
            say(f"ours: {type(e).__name__}")
        finally:
            timer.cancel()
            stream.cancel()
            with contextlib.suppress(Exception):
                c.destroy_vm(name)
    return at or -1.0, "".join(text)


def landmarks(console: str) -> dict[str, Any]:
    """The console before KVMPLAT-INIT (bytes, lines) and the kernel log's first timestamp at each landmark."""
    before, _, after = console.partition("KVMPLAT-INIT")
    stamps: dict[str, float] = {}
    for line in after.splitlines():
        m = re.match(r"\s*\[\s*(\d+\.\d+)\]\s*(.*)", line)
        if not m:
            continue
        for mark in LANDMARKS:
            if mark in m[2] and mark not in stamps:
                stamps[mark] = float(m[1])
    last = re.findall(r"\[\s*(\d+\.\d+)\]", after)
    return {
        "console_bytes_before_init": len(before),
        "console_before_init": before.strip().splitlines()[-40:],
        "stamps": stamps,
        "last_stamp": float(last[-1]) if last else None,
    }


def cpu_times() -> dict[str, float]:
    """CPU seconds (user+system) of every thread on this host, by 'pid/tid comm'."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/task/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            f = text[text.rindex(")") + 2 :].split()
            out[f"{stat.parts[2]}/{stat.parts[4]} {comm}"] = (int(f[11]) + int(f[12])) / tick
    return out


def busiest(before: dict[str, float], after: dict[str, float]) -> list[tuple[str, float]]:
    """The threads that used the most CPU between two cpu_times() readings."""
    used = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}
    return sorted(((k, v) for k, v in used.items() if v >= 0.05), key=lambda kv: -kv[1])[:15]


def one(kind: str, fn: Any) -> dict[str, Any]:
    """Runs one boot under the trace; its figures."""
    before = cpu_times()
    with Trace() as tr:
        ms, console = fn()
    cpu = busiest(before, cpu_times())
    out = {"kind": kind, "ms": round(ms), "cpu": cpu, **landmarks(console), **summarize(tr.text())}
    dmesg = console.partition("KVMPLAT-INIT")[2].partition(END)[0]
    for line in dmesg.strip().splitlines():
        say(f"dmesg {kind}: {line}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Boots both contenders `--runs` times, alternating; prints each run's figures and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--extra", default="", help="more kernel command line for both")
    ap.add_argument("--ours-ram", default="huge,memfd", help="guest RAM backings to boot ours with (KVMPLAT_GUEST_RAM)")
    args = ap.parse_args(argv)
    from kvmplat.client.localagent import LocalAgent

    img = image()
    tmp = Path(tempfile.mkdtemp(prefix="kvmplat-bootdiff-"))
    cmdline = f"{img['cmdline']} quiet printk.time=1 {args.extra}".strip()
    results = []
    try:
        initrd = overlay_initrd(img["initrd"], tmp / "initrd.cpio")
        flags = ["--image-dir", str(tmp), "--image-dir", str(Path(img["kernel"]).parents[1])]
        with contextlib.ExitStack() as stack:
            agents = {}
            for ram in args.ours_ram.split(","):  # an agent each: its runners inherit KVMPLAT_GUEST_RAM
                os.environ["KVMPLAT_GUEST_RAM"] = ram
                (tmp / ram).mkdir()
                agents[ram] = stack.enter_context(LocalAgent.start(tmp / ram, flags, timeout=120.0)).address
            for i in range(args.runs):
                for ram, address in agents.items():
                    results.append(one(f"ours_{ram}", lambda i=i, a=address: run_ours(a, img, initrd, cmdline, i)))
                if not os.environ.get("KVMPLAT_BOOTDIFF_BARE"):
                    results.append(one("qemu_microvm", lambda: run_qemu(img, initrd, cmdline)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in results:
        say(json.dumps(r))
    print(json.dumps({"cmdline": cmdline, "runs": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
