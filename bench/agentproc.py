"""A private kvmplat-agent for a benchmark: its own unix socket, state dir and log in a temporary directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from kvmplat.client.localagent import AGENT, AgentNotStarted, LocalAgent
from kvmplat.v1 import agent_pb2_grpc as pbg

__all__ = ["AGENT", "agent", "children", "cpu_seconds", "stub", "template_pid"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def agent(
    prefix: str, flags: tuple[str, ...] = (), program: str = ""
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A kvmplat-agent (the one launcher, kvmplat.client.localagent), yielded as (address, process, temp dir) once
    it answers; its VMs destroyed and it stopped after.

    It runs in a session of its own, so a Ctrl-C reaches only the benchmark, which then stops it. With
    KVMPLAT_BENCH_KEEP set the temp dir (and the agent's log in it) is kept. `program` is another kvmplat-agent to
    run (another checkout's, for a side-by-side comparison)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"kvmplat-{prefix}-"))
    try:
        try:
            local = LocalAgent.start(tmp, flags, timeout=120, new_session=True, program=[program] if program else ())
        except AgentNotStarted as e:
            raise SystemExit(str(e)) from None
        with local:
            yield local.address, local.proc, tmp
    finally:
        if os.environ.get("KVMPLAT_BENCH_KEEP"):
            print(f"agent log kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def stub(address: str) -> Any:
    """A blocking stub on a channel of its own."""
    return pbg.AgentStub(grpc.insecure_channel(address))  # type: ignore[no-untyped-call]


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system CPU seconds of a process (all its threads), and with `reaped` those of the children it has
    waited for; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11 : 15 if reaped else 13]) / CLK_TCK


def children(pid: int) -> list[int]:
    """Direct children of `pid` (the runner template is the agent's child)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in task.read_text().split()]
    return out


def template_pid(agent_pid: int) -> int:
    """The pid of the agent's runner template (its runners' parent, which reaps them); 0 if none is found."""
    for pid in children(agent_pid):
        with contextlib.suppress(OSError):
            if b"kvmplat.agent.runner.template" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return 0
