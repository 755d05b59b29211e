"""Live migration: kvmplat (two private agents on this host) against QEMU's own (two qemu-system-x86_64 -enable-kvm
-cpu qemu64 processes, `-incoming tcp:` and `migrate` over QMP), 64/256/1024 MiB guests, idle and busy, alternating.

Ours: an idle guest is the `loop` payload, a busy one the `dirty` payload (writes every page above 1 MiB, round after
round). QEMU's: an idle guest is SeaBIOS with nothing to boot; a busy one a tiny multiboot kernel doing what `dirty`
does (the same loop, in 32-bit protected mode). Both skip zero pages; QEMU's bandwidth limit is lifted (its default
is 32 MiB/s) and its downtime limit left at its default (300 ms). A busy guest that never converges: kvmplat stops
after its rounds stop shrinking; QEMU is then given a 10 s downtime limit so that it finishes at all (said in the
case's `qemu_note`).

    .venv/bin/python bench/migrate.py [--runs N] [--sizes 64,256,1024]

The last line is JSON: {"cases": [...], "downtime_ratio_vs_qemu": R, "total_ratio_vs_qemu": R} (ours / QEMU's,
geometric mean of the per-case medians; below 1.0 is better than QEMU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentproc import agent
from kvmplat.client.agent import Client
from kvmplat.v1 import agent_pb2 as pb

WARM_S = 2.0  # the guest runs this long before it moves


def ours(mib: int, dirtying: bool, src: str, dst: str) -> tuple[float, float]:
    """(total ms, downtime ms) of one kvmplat migration."""
    name = f"m{mib}{'d' if dirtying else 'i'}"
    spec = pb.VmSpec(name=name, vcpus=1, memory_mib=mib, boot=pb.BootSpec(builtin="dirty" if dirtying else "loop"))
    with Client(src, timeout=60) as a, Client(dst, timeout=60) as b:
        a.create_vm(spec, start=True)
        time.sleep(WARM_S)
        last = list(a.migrate_vm(name, dst))[-1]
        b.stop_vm(name)
        b.destroy_vm(name)
    return float(last.total_ms), float(last.downtime_ms)


def multiboot_dirtier() -> bytes:
    """A multiboot kernel (loaded at 1 MiB) that writes a counter into every page from 2 MiB up, forever."""
    code = bytes.fromhex("89de8b5e08c1e30a81c30000100031c9")  # esi=mbi; ebx=1MiB+mem_upper KiB; ecx=0
    rnd = len(code)
    code += bytes.fromhex("41bf00002000")  # round: inc ecx; edi=2 MiB
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


def theirs(mib: int, dirtying: bool, tmp: Path) -> tuple[float, float, str]:
    """(total ms, downtime ms, note) of one QEMU migration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    guest: list[str] = []
    if dirtying:
        kernel = tmp / "dirtier.mb"
        kernel.write_bytes(multiboot_dirtier())
        guest = ["-kernel", str(kernel)]
    note = ""
    with (
        qemu(mib, tmp, "dst", [*guest, "-incoming", f"tcp:127.0.0.1:{port}"]),
        qemu(mib, tmp, "src", guest) as src,
    ):
        time.sleep(WARM_S)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        start = time.monotonic()
        while (info := src.cmd("query-migrate")).get("status") not in ("completed", "failed"):
            if time.monotonic() - start > 30 and not note:
                src.cmd("migrate-set-parameters", **{"downtime-limit": 10000})
                note = "did not converge in 30 s: downtime limit raised to 10 s"
            time.sleep(0.01)
        if info["status"] != "completed":
            raise RuntimeError(f"QEMU migration failed: {info}")
    return float(info["total-time"]), float(info["downtime"]), note


def _gmean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(max(v, 1e-3)) for v in values))


def main() -> None:
    """Runs every case, alternating kvmplat and QEMU, and prints the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--sizes", default="64,256,1024")
    args = p.parse_args()
    cases = []
    with agent("mig-a") as (src, _, _), agent("mig-b") as (dst, _, _), tempfile.TemporaryDirectory() as tmp:
        for mib in (int(x) for x in args.sizes.split(",")):
            for dirtying in (False, True):
                o: list[tuple[float, float]] = []
                q: list[tuple[float, float, str]] = []
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
                    "qemu_note": "; ".join(sorted({x[2] for x in q if x[2]})),
                }
                print(json.dumps(case), file=sys.stderr, flush=True)
                cases.append(case)
    down = _gmean([c["ours_downtime_ms"] / max(c["qemu_downtime_ms"], 1.0) for c in cases])
    total = _gmean([c["ours_total_ms"] / max(c["qemu_total_ms"], 1.0) for c in cases])
    ratios = {"downtime_ratio_vs_qemu": round(down, 3), "total_ratio_vs_qemu": round(total, 3)}
    print(json.dumps({"cases": cases, **ratios}))


if __name__ == "__main__":
    main()
