"""Benchmark: time from start to a Linux guest's first console line (or its /init), kvmplat beside QEMU, in one run.

The same bzImage, initramfs and command line (the image's own plus `earlyprintk=serial,ttyS0,115200 nokaslr`) to the
same first line (the decompressor's "KASLR disabled ..." or any early-console line):
  ours            CreateVm(start=True) on a real kvmplat-agent (private socket) → the first matching console event
                  (each run split on stderr with the VM's milestones: setup, guest, console path)
  qemu microvm    process start → the line on QEMU's stdout (`-enable-kvm -cpu qemu64 -M microvm -kernel … -initrd …`)
  qemu pc         the same with `-M pc` (SeaBIOS first)
Rounds alternate the three so host noise falls on all of them alike. The image is built first if missing
(kvmplat image build). `--until init` times the image's /init instead (its `KVMPLAT-INIT` line, the image's command
line plus `quiet`): that needs hardware KVM, e.g. inside the x86 lab (lab/x86/inside.py runs
`--until init --machines microvm`). `--machines` picks the QEMU machines (default microvm,pc).
Last line: {"ours_ms": .., "qemu_microvm_ms": .., "qemu_pc_ms": .., "ratio_vs_qemu_microvm": ..}
(medians). Goal: ratio ≤ 1.0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

FIRST_LINE = re.compile(rb"KASLR disabled|Decompressing|early console")
EXTRA_CMDLINE = "earlyprintk=serial,ttyS0,115200 nokaslr"
TARGETS = {  # --until: (what the console must show, what the image's command line gets, QEMU's -cpu)
    "first-line": (FIRST_LINE, EXTRA_CMDLINE, "qemu64"),  # -cpu host/max abort on kvm_pvm (MSR 0x10a)
    # a kernel log costs an exit per byte, in both contenders; -cpu max: the whole KVM-supported CPUID, as kvmplat
    # gives its guest, so both kernels boot the same CPU (this target needs hardware KVM anyway)
    "init": (re.compile(rb"KVMPLAT-INIT"), "quiet", "max"),
}
MEMORY_MIB = 256
TIMEOUT_S = 180.0  # a bound against a hung guest: to /init inside the x86 lab takes 35-60 s
AGENT_START_S = 120.0  # the agent's start-up (imports, probe guests) takes ~25 s inside the x86 lab's TCG
QEMU = "qemu-system-x86_64"
TARGET = TARGETS["first-line"]  # set by --until


def say(text: str) -> None:
    """Progress on stderr, so stdout ends with the JSON line."""
    print(text, file=sys.stderr, flush=True)


def image() -> dict[str, str]:
    """The Linux guest image's paths, building it first when it is missing."""
    from kvmplat.client import guest_image as img

    try:
        return img.paths()
    except img.ImageError:
        say("building the guest image (kvmplat image build)")
        return img.build(say)


@contextlib.contextmanager
def agent(tmp: Path) -> Iterator[str]:
    """A kvmplat-agent beside this interpreter on a private socket (kvmplat.client.localagent); yields its address."""
    from kvmplat.client.localagent import LocalAgent

    with LocalAgent.start(tmp, timeout=AGENT_START_S) as local:
        yield local.address


def ours_once(address: str, img: dict[str, str], run: int) -> float:
    """Milliseconds from CreateVm(start) to the first matching console event."""
    from kvmplat.client.agent import Client
    from kvmplat.v1 import agent_pb2 as pb

    name = f"boot{run}"
    cmdline = f"{img['cmdline']} {TARGET[1]}".strip()
    spec = pb.VmSpec(name=name, vcpus=1, memory_mib=MEMORY_MIB, platform=pb.PlatformSpec(pv=[pb.KVM]))
    spec.boot.CopyFrom(pb.BootSpec(kernel=img["kernel"], initrd=img["initrd"], cmdline=cmdline))
    with Client(address, timeout=30.0) as c:
        stream = c.watch_events(vm="", follow=True)  # subscribed before the VM exists: no line can be missed
        try:
            t0, wall0 = time.monotonic(), time.time()
            c.create_vm(spec, start=True)
            elapsed = _first_console(stream, name, t0)
            _where_the_time_went(c.get_vm(name).stats, wall0, elapsed)
        finally:
            stream.cancel()
            with contextlib.suppress(Exception):
                c.stop_vm(name)
            c.destroy_vm(name)
    return elapsed


def _where_the_time_went(stats: Any, wall0: float, elapsed: float) -> None:
    """Splits one run with the VM's milestones: host setup (create -> vCPUs started), the guest (-> its first console
    byte), and the console path (-> the line seen on the event stream)."""
    if not (stats.HasField("started") and stats.HasField("first_console_byte")):
        return
    started = stats.started.ToNanoseconds() / 1e9
    first = stats.first_console_byte.ToNanoseconds() / 1e9
    host, guest = (started - wall0) * 1000, (first - started) * 1000
    path = elapsed - host - guest
    say(f"      ours: setup {host:.0f} ms, guest to first byte {guest:.0f} ms, console path {path:.0f} ms")


def _first_console(stream: Iterable[Any], name: str, t0: float) -> float:
    """Reads events until `name` prints the first line; its time in ms since t0."""
    from kvmplat.client.vmstates import ENDED

    for ev in stream:
        kind = ev.WhichOneof("kind")
        if ev.vm == name and kind == "console" and TARGET[0].search(ev.console.text.encode()):
            return (time.monotonic() - t0) * 1000
        if ev.vm == name and kind == "state" and ev.state.to in ENDED:
            break
        if time.monotonic() - t0 > TIMEOUT_S:
            break
    raise SystemExit(f"kvmplat: {name} never printed its first console line")


def qemu_once(machine: str, img: dict[str, str]) -> float:
    """Milliseconds from QEMU's process start to the first matching line on its serial console."""
    cmd = [QEMU, "-enable-kvm", "-cpu", TARGET[2], "-M", machine, "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot"]
    cmd += ["-display", "none", "-monitor", "none", "-serial", "stdio", "-kernel", img["kernel"]]
    cmd += ["-initrd", img["initrd"], "-append", f"{img['cmdline']} {TARGET[1]}".strip()]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        return _wait_output(proc, t0)
    finally:
        proc.kill()
        proc.wait()


def _wait_output(proc: subprocess.Popen[bytes], t0: float) -> float:
    """Reads QEMU's stdout until the first line matches; ms since t0."""
    assert proc.stdout is not None
    fd, seen = proc.stdout.fileno(), b""
    while time.monotonic() - t0 < TIMEOUT_S:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen = seen[-4096:] + chunk
        if TARGET[0].search(seen):
            return (time.monotonic() - t0) * 1000
    raise SystemExit(f"qemu: no first console line (exit {proc.poll()}): {seen[-200:]!r}")


def rounds(runs: int, contenders: dict[str, Callable[[int], float]]) -> dict[str, list[float]]:
    """`runs` alternating rounds of every contender."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for i in range(runs):
        for key, once in contenders.items():
            times[key].append(once(i))
            say(f"round {i + 1}/{runs}  {key:<16} {times[key][-1]:8.0f} ms")
    return times


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the summary (the JSON line last)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    ap.add_argument("--until", choices=sorted(TARGETS), default="first-line", help="what to time (default first-line)")
    ap.add_argument("--machines", default="microvm,pc", help="QEMU machines beside kvmplat (default microvm,pc)")
    args = ap.parse_args(argv)
    global TARGET
    TARGET = TARGETS[args.until]
    if shutil.which(QEMU) is None:
        raise SystemExit(f"{QEMU} is missing (Debian package qemu-system-x86)")
    img = image()
    tmp = Path(tempfile.mkdtemp(prefix="kvmplat-bench-boot-"))
    try:
        with agent(tmp) as address:
            contenders: dict[str, Callable[[int], float]] = {"ours": lambda i: ours_once(address, img, i)}
            for m in filter(None, args.machines.split(",")):
                contenders[f"qemu_{m}"] = lambda _i, m=m: qemu_once(m, img)  # type: ignore[misc]
            times = rounds(args.runs, contenders)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {f"{k}_ms": round(statistics.median(v), 1) for k, v in times.items()}
    if "qemu_microvm_ms" in med:
        med["ratio_vs_qemu_microvm"] = round(med["ours_ms"] / med["qemu_microvm_ms"], 3)
    if not args.json:
        for k, v in times.items():
            print(f"{k:<16} median {statistics.median(v):8.0f} ms  runs {', '.join(f'{x:.0f}' for x in v)}")
    print(json.dumps(med))
    return 0


if __name__ == "__main__":
    sys.exit(main())
