"""A private kvmplat-agent for a benchmark: its own unix socket, state dir and log in a temporary directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from kvmplat.client.agent import Client
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg

AGENT = str(Path(sys.executable).parent / "kvmplat-agent")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def agent(
    prefix: str, flags: tuple[str, ...] = (), program: str = AGENT
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A kvmplat-agent, yielded as (address, process, temp dir) once it answers; stopped and cleaned up after.

    It runs in a session of its own, so a Ctrl-C reaches only the benchmark, which then stops it. Every VM still
    there is destroyed first: runners outlive their agent by design, and no later agent would adopt these. With
    KVMPLAT_BENCH_KEEP set the temp dir (and the agent's log in it) is kept. `program` is the kvmplat-agent to run
    (another checkout's, for a side-by-side comparison)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"kvmplat-{prefix}-"))
    address = f"unix://{tmp}/agent.sock"
    argv = [program, "--listen", address, "--state-dir", str(tmp / "state"), *flags]
    with (tmp / "agent.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_ready(address, proc, tmp / "agent.log")
        yield address, proc, tmp
    finally:
        if proc.poll() is None:
            with Client(address, timeout=30) as client:
                client.destroy_all()
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if os.environ.get("KVMPLAT_BENCH_KEEP"):
            print(f"agent log kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def stub(address: str) -> Any:
    """A blocking stub on a channel of its own."""
    return pbg.AgentStub(grpc.insecure_channel(address))  # type: ignore[no-untyped-call]


def wait_ready(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Returns once the agent answers (a fresh state dir probes the host first); exits with its log's end if not."""
    probe = stub(address)
    deadline = time.monotonic() + 120
    while True:
        try:
            probe.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=2)
            return
        except grpc.RpcError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"kvmplat-agent did not start: {log.read_text(errors='replace')[-800:]}") from None
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK
