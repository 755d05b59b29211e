"""Helpers for driving the real `kvmplat-agent` over gRPC: a private unix socket and state dir per agent, raw stubs
and the `Client`, and cleanup that destroys every VM and stops the agent."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from kvmplat.client.localagent import AGENT as AGENT_PATH
from kvmplat.client.localagent import LocalAgent
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg

AgentFactory = Callable[..., "AgentProc"]  # the agent_factory fixture: flags in, a running agent out
AGENT = str(AGENT_PATH)  # for tests of the agent's own start-up refusals, which run it directly
# What a bad request may get: the caller's fault, named; never UNKNOWN or INTERNAL.
BAD_INPUT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class AgentProc:
    """One running agent (started by the one launcher, kvmplat.client.localagent): its process, address, state dir,
    a raw stub and a `Client`."""

    def __init__(self, tmp: Path, *flags: str) -> None:
        self.local = LocalAgent.start(tmp, flags)
        self.tmp, self.address, self.proc, self.client = tmp, self.local.address, self.local.proc, self.local.client
        self.state_dir, self.log_path = self.local.state_dir, self.local.log_path
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pbg.AgentStub(self.channel)
        self.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)  # both connections open before any test

    def list_vms(self) -> pb.ListVmsResponse:
        """ListVms, raw."""
        reply: pb.ListVmsResponse = self.stub.ListVms(pb.ListVmsRequest(), timeout=10)
        return reply

    def get(self, name: str) -> pb.Vm:
        """GetVm, raw."""
        vm: pb.Vm = self.stub.GetVm(pb.VmRequest(name=name), timeout=10)
        return vm

    def wait_state(self, name: str, state: int, timeout: float = 30) -> pb.Vm:
        """Polls GetVm until the VM is in `state` (a pb.VmState value)."""
        deadline = time.monotonic() + timeout
        while (vm := self.get(name)).state != state:
            assert time.monotonic() < deadline, f"{name} never reached {pb.VmState.Name(state)}: {vm.state}"
            time.sleep(0.02)
        return vm

    def close(self) -> None:
        """Destroys every VM, stops the agent and removes its files."""
        try:
            self.local.stop()
        finally:
            self.channel.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def loop_spec(name: str, vcpus: int = 1, memory_mib: int = 16, builtin: str = "loop") -> pb.VmSpec:
    """A VmSpec of a built-in payload."""
    return pb.VmSpec(name=name, vcpus=vcpus, memory_mib=memory_mib, boot=pb.BootSpec(builtin=builtin))


def fd_targets(pid: int) -> list[str]:
    """What each of the process's fds points at (readlink of /proc/PID/fd/*)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def flood_kernel(directory: Path, line: int = 400) -> Path:
    """A tiny 64-bit ELF "kernel" (booted by the Linux loader) that writes `line`-character lines to COM1 forever."""
    # mov $0x3f8,%dx; outer: lea msg(%rip),%rsi; inner: lodsb; test %al,%al; jz outer; out %al,%dx; jmp inner; msg
    code = bytes.fromhex("66baf803") + b"\x48\x8d\x35" + struct.pack("<i", 8) + bytes.fromhex("ac84c074f4eeebf8")
    code += b"f" * (line - 1) + b"\n\0"
    load = 0x100000
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, load, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, load, load, len(code), len(code), 0x1000)
    path = directory / "flood.elf"
    path.write_bytes((ehdr + phdr).ljust(0x1000, b"\0") + code)
    return path


def kernel_spec(name: str, kernel: Path, memory_mib: int = 64) -> pb.VmSpec:
    """A VmSpec booting `kernel` (from an --image-dir) on one vCPU."""
    return pb.VmSpec(name=name, vcpus=1, memory_mib=memory_mib, boot=pb.BootSpec(kernel=str(kernel)))


def rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """The pids of a process's children."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def comm(pid: int) -> str:
    """The process's name (/proc/PID/comm)."""
    return Path(f"/proc/{pid}/comm").read_text().strip()


def steady_fds(agent: AgentProc, timeout: float = 30.0) -> int:
    """How many fds the agent holds once its spare runners are set up and passed on to it (it holds a socket to
    each: agent/registry/spares.py), and the count stays put."""
    from kvmplat.agent.runner.template import SPARE_COMM, SPARES

    pid = agent.proc.pid
    template = next(p for p in children(pid) if b"runner.template" in Path(f"/proc/{p}/cmdline").read_bytes())
    deadline = time.monotonic() + timeout
    while True:
        before = len(fd_targets(pid))
        time.sleep(0.1)
        if len([p for p in children(template) if comm(p) == SPARE_COMM]) == SPARES and len(fd_targets(pid)) == before:
            return before
        assert time.monotonic() < deadline, "the agent's spares did not settle"


def gone(pid: int) -> bool:
    """Whether the process has exited (a zombie counts: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
