"""Live migration: kvmplat (two private agents on this host) against QEMU's own (two qemu-system-x86_64 -enable-kvm
-cpu qemu64 processes, `-incoming tcp:` and `migrate` over QMP), 64/256/1024 MiB guests, idle and busy, alternating.

Ours: an idle guest is the `loop` payload, a busy one the `dirty` payload (a counter written into every page from
1 MiB up, round after round). QEMU's: an idle guest is SeaBIOS with nothing to boot; a busy one a tiny multiboot
kernel running the same loop with the same stride (in 32-bit protected mode), which says so on port 0xe9 first: it
only moves once it runs (SeaBIOS under emulation takes ~10 s to get there; before this, its "busy" guest dirtied
nothing). Each busy guest's dirty rate is measured just before it moves, from the counters along its sweep
(`*_dirty_mib_s`). Both skip zero pages; QEMU's bandwidth limit is lifted (its default is 32 MiB/s), its downtime
limit left at its default (300 ms, as ours) and its auto-converge on (as ours); `*_throttle_pct` is the highest
vCPU throttle either applied. A QEMU migration that has not converged after 30 s gets a 10 s downtime limit so that
it finishes at all (said in the case's `qemu_note`).

    .venv/bin/python bench/migrate.py [--runs N] [--sizes 64,256,1024]

The last line is JSON: {"cases": [...], "downtime_ratio_vs_qemu": R, "total_ratio_vs_qemu": R, "busy_...", "idle_..."}
(ours / QEMU's, geometric mean of the per-case medians' ratios; below 1.0 is better than QEMU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agentproc import agent
from kvmplat.client.agent import Client
from kvmplat.v1 import agent_pb2 as pb

WARM_S = 2.0  # the guest runs this long before it moves
RATE_S = 2.0  # the busy guest's dirty rate is measured over this long, just before it moves
PROBES = 32  # counters read to tell how far its sweep got


def ours(mib: int, dirtying: bool, src: str, dst: str) -> tuple[float, float, float, int]:
    """(total ms, downtime ms, guest dirty rate MiB/s, last vCPU throttle %) of one kvmplat migration."""
    name = f"m{mib}{'d' if dirtying else 'i'}"
    spec = pb.VmSpec(name=name, vcpus=1, memory_mib=mib, boot=pb.BootSpec(builtin="dirty" if dirtying else "loop"))
    with Client(src, timeout=60) as a, Client(dst, timeout=60) as b:
        a.create_vm(spec, start=True)
        time.sleep(WARM_S)
        rate = _sweep_rate(lambda: _memfd_words(a.get_vm(name).runner_pid, mib), mib) if dirtying else 0.0
        last = list(a.migrate_vm(name, dst))[-1]
        b.stop_vm(name)
        b.destroy_vm(name)
    return float(last.total_ms), float(last.downtime_ms), rate, int(last.throttle_percent)


def _probes(mib: int) -> list[int]:
    """Guest addresses whose counters tell how far the busy guest got: one per 1/PROBES of its sweep."""
    step = ((mib - 1) << 20) // PROBES // 4096 * 4096
    return [(1 << 20) + i * step for i in range(PROBES)]


def _memfd_words(pid: int, mib: int) -> int:
    """The sum of the counters the busy guest wrote at the probe addresses, read through its runner's memfd."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:kvmplat-guest"):
            f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
            try:
                return sum(int.from_bytes(os.pread(f, 4, a), "little") for a in _probes(mib))
            finally:
                os.close(f)
    raise RuntimeError(f"runner {pid} has no guest memfd")


def _sweep_rate(words: Callable[[], int], mib: int) -> float:
    """MiB/s the busy guest writes: how many probe addresses its sweeps passed in RATE_S, times their spacing."""
    c0, t0 = words(), time.monotonic()
    time.sleep(RATE_S)
    c1, t1 = words(), time.monotonic()
    return round((c1 - c0) * (mib - 1) / PROBES / (t1 - t0), 1)


def multiboot_dirtier() -> bytes:
    """A multiboot kernel (loaded at 1 MiB) that says "D" on port 0xe9 once, then writes a counter into every page
    from 1 MiB up, round after round, forever: the `dirty` payload's loop and stride (its first page is the
    multiboot header, not code)."""
    code = bytes.fromhex("b044e6e9")  # mov al, 'D'; out 0xe9, al
    code += bytes.fromhex("89de8b5e08c1e30a81c30000100031c9")  # esi=mbi; ebx=1MiB+mem_upper KiB; ecx=0
    rnd = len(code)
    code += bytes.fromhex("41bf00001000")  # round: inc ecx; edi=1 MiB
    page = len(code)
    code += bytes.fromhex("890f81c70010000039df")  # page: [edi]=ecx; edi+=4096; cmp edi, ebx
    code += bytes([0x72, (page - (len(code) + 2)) & 0xFF])  # jb page
    code += bytes([0xEB, (rnd - (len(code) + 2)) & 0xFF])  # jmp round
    load, hdr_len = 0x100000, 32
    entry = load + hdr_len
    end = load + hdr_len + len(code)
    magic, flags = 0x1BADB002, 0x10000
    header = struct.pack("<8I", magic, flags, (-(magic + flags)) & 0xFFFFFFFF, load, load, end, end, entry)
    return header + code


class Qmp:
    """A minimal QMP client on a unix socket."""

    def __init__(self, path: str) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.f = self.sock.makefile("rw")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args: Any) -> Any:
        """Runs one command; returns its result (events in between are skipped)."""
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            msg = json.loads(self.f.readline())
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"QMP {name}: {msg['error']}")


@contextlib.contextmanager
def qemu(mib: int, tmp: Path, tag: str, extra: list[str]) -> Iterator[Qmp]:
    """One qemu-system-x86_64 with a QMP socket."""
    qmp = str(tmp / f"{tag}.qmp")
    argv = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "qemu64", "-m", str(mib), "-nodefaults", "-display", "none"]
    argv += ["-qmp", f"unix:{qmp},server=on,wait=off", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield Qmp(qmp)
    finally:
        proc.kill()
        proc.wait()


def _await_marker(con: Path, dirtying: bool) -> None:
    """Waits until the busy guest runs its loop (SeaBIOS under emulation takes seconds to get there)."""
    deadline = time.monotonic() + 120
    while dirtying and not (con.exists() and con.read_bytes()):
        if time.monotonic() > deadline:
            raise RuntimeError("QEMU's busy guest never started its loop")
        time.sleep(0.05)


def _qemu_words(src: Qmp, tmp: Path, mib: int) -> int:
    """The sum of the counters QEMU's busy guest wrote at the probe addresses (QMP pmemsave)."""
    out, total = tmp / "word", 0
    for a in _probes(mib):
        src.cmd("pmemsave", val=a, size=4, filename=str(out))
        total += int.from_bytes(out.read_bytes(), "little")
    return total


def theirs(mib: int, dirtying: bool, tmp: Path) -> tuple[float, float, float, int, str]:
    """(total ms, downtime ms, guest dirty rate MiB/s, highest vCPU throttle %, note) of one QEMU migration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    guest: list[str] = []
    if dirtying:
        kernel = tmp / "dirtier.mb"
        kernel.write_bytes(multiboot_dirtier())
        guest = ["-kernel", str(kernel)]
    note = ""
    con = tmp / "src.con"
    con.unlink(missing_ok=True)
    with (
        qemu(mib, tmp, "dst", [*guest, "-incoming", f"tcp:127.0.0.1:{port}"]),
        qemu(mib, tmp, "src", [*guest, "-debugcon", f"file:{con}"]) as src,
    ):
        _await_marker(con, dirtying)
        time.sleep(WARM_S)
        rate = _sweep_rate(lambda: _qemu_words(src, tmp, mib), mib) if dirtying else 0.0
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        src.cmd("migrate-set-capabilities", capabilities=[{"capability": "auto-converge", "state": True}])
        src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        start, throttle = time.monotonic(), 0
        while (info := src.cmd("query-migrate")).get("status") not in ("completed", "failed"):
            throttle = max(throttle, int(info.get("cpu-throttle-percentage", 0)))
            if time.monotonic() - start > 30 and not note:
                src.cmd("migrate-set-parameters", **{"downtime-limit": 10000})
                note = "did not converge in 30 s: downtime limit raised to 10 s"
            time.sleep(0.01)
        if info["status"] != "completed":
            raise RuntimeError(f"QEMU migration failed: {info}")
    return float(info["total-time"]), float(info["downtime"]), rate, throttle, note


def _gmean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(max(v, 1e-3)) for v in values))


def main() -> None:
    """Runs every case, alternating kvmplat and QEMU, and prints the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--sizes", default="64,256,1024")
    args = p.parse_args()
    cases: list[dict[str, Any]] = []
    with agent("mig-a") as (src, _, _), agent("mig-b") as (dst, _, _), tempfile.TemporaryDirectory() as tmp:
        for mib in (int(x) for x in args.sizes.split(",")):
            for dirtying in (False, True):
                o: list[tuple[float, float, float, int]] = []
                q: list[tuple[float, float, float, int, str]] = []
                for _ in range(args.runs):
                    o.append(ours(mib, dirtying, src, dst))
                    q.append(theirs(mib, dirtying, Path(tmp)))
                case = {
                    "mib": mib,
                    "dirtying": dirtying,
                    "ours_total_ms": statistics.median(x[0] for x in o),
                    "ours_downtime_ms": statistics.median(x[1] for x in o),
                    "qemu_total_ms": statistics.median(x[0] for x in q),
                    "qemu_downtime_ms": statistics.median(x[1] for x in q),
                    "ours_dirty_mib_s": statistics.median(x[2] for x in o),
                    "qemu_dirty_mib_s": statistics.median(x[2] for x in q),
                    "ours_throttle_pct": max(x[3] for x in o),
                    "qemu_throttle_pct": max(x[3] for x in q),
                    "qemu_note": "; ".join(sorted({x[4] for x in q if x[4]})),
                }
                print(json.dumps(case), file=sys.stderr, flush=True)
                cases.append(case)
    print(json.dumps({"cases": cases, **_ratios(cases, ""), **_ratios(cases, "busy_"), **_ratios(cases, "idle_")}))


def _ratios(cases: list[dict[str, Any]], which: str) -> dict[str, float]:
    """Geometric means of ours/QEMU's downtime and total over all cases, or only the busy or the idle ones."""
    some = [c for c in cases if not which or c["dirtying"] == (which == "busy_")]
    out = {}
    for key in ("downtime", "total"):
        r = _gmean([float(c[f"ours_{key}_ms"]) / max(float(c[f"qemu_{key}_ms"]), 1.0) for c in some])
        out[f"{which}{key}_ratio_vs_qemu"] = round(r, 3)
    return out


if __name__ == "__main__":
    main()
