"""Interactive console, end to end: `kvmplat console NAME` sends what it reads on stdin to the VM (WriteConsole),
and the built-in `echo` guest writes it back through the UART, which arrives as console events and on the CLI's
stdout."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guest_harness import Agent
from kvmplat.client.cli.console import DETACH
from kvmplat.client.errors import FailedPrecondition
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.kvm, pytest.mark.e2e]

CLI = str(Path(sys.executable).parent / "kvmplat")
WAIT_S = 30.0


def _read_until(stream: int, needle: bytes, proc: subprocess.Popen[bytes]) -> bytes:
    """Reads the CLI's stdout until `needle` shows up (or the bound passes)."""
    seen, deadline = b"", time.monotonic() + WAIT_S
    while needle not in seen and (left := deadline - time.monotonic()) > 0 and proc.poll() is None:
        if select.select([stream], [], [], left)[0]:
            seen += os.read(stream, 4096)
    return seen


def test_console_input_reaches_the_guest_and_comes_back(guest_agent: Agent) -> None:
    spec = pb.VmSpec(name="echo", vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="echo"))
    guest_agent.client.create_vm(spec, start=True)
    guest_agent.wait_text("echo", "kvmplat-echo: ready", WAIT_S)
    env = dict(os.environ, KVMPLAT_AGENT=guest_agent.address)
    proc = subprocess.Popen(
        [CLI, "console", "echo"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"typed into kvmplat\n")
        proc.stdin.flush()
        out = _read_until(proc.stdout.fileno(), b"typed into kvmplat\n", proc)
        assert b"typed into kvmplat\n" in out, (out, proc.poll())
        proc.stdin.write(b"second line\n" + DETACH)
        proc.stdin.flush()
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    guest_agent.wait_text("echo", "second line\n", WAIT_S)
    console = guest_agent.console("echo")
    assert console == "kvmplat-echo: ready\ntyped into kvmplat\nsecond line\n"
    assert guest_agent.client.get_vm("echo").state == pb.RUNNING  # detaching leaves the guest running
    guest_agent.discard("echo")


def test_console_refuses_input_once_stopped(guest_agent: Agent) -> None:
    spec = pb.VmSpec(name="echo2", vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="echo"))
    guest_agent.client.create_vm(spec, start=True)
    guest_agent.client.stop_vm("echo2")
    with pytest.raises(FailedPrecondition, match="STOPPED"):
        guest_agent.client.write_console("echo2", b"x")
    guest_agent.discard("echo2")


def _untimed_select(pid: int) -> bool:
    """True when a thread of process `pid` is blocked in select/pselect6 with no timeout (x86-64 syscall numbers 23
    and 270; the timeout pointer is the fifth argument). In a runner only the console reader selects."""
    for path in Path(f"/proc/{pid}/task").glob("*/syscall"):
        fields = path.read_text().split()
        if len(fields) > 5 and fields[0] in ("23", "270") and int(fields[5], 16) == 0:
            return True
    return False


def test_an_idle_console_blocks_without_a_timeout_and_still_delivers_a_later_prompt(guest_agent: Agent) -> None:
    """Once quiet, the runner's console reader blocks with no timeout (the echo guest halts until input: nothing
    wakes it); a partial line written later (a prompt, no newline) still comes out, because the UART signals the
    idle reader. (bench/lifecycle.py counts the idle runner's wakeups.)"""
    spec = pb.VmSpec(name="echo3", vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="echo"))
    pid = guest_agent.client.create_vm(spec, start=True).runner_pid
    guest_agent.wait_text("echo3", "kvmplat-echo: ready", WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while not _untimed_select(pid):
        assert time.monotonic() < deadline, f"the console reader of runner {pid} never blocked without a timeout"
        time.sleep(0.05)
    guest_agent.client.write_console("echo3", b"prompt> ")
    guest_agent.wait_text("echo3", "prompt> ", WAIT_S)
    assert guest_agent.console("echo3").endswith("ready\nprompt> ")
    guest_agent.discard("echo3")
