"""Helpers for driving the real `kvmplat-agent` over gRPC: a private unix socket and state dir per agent, raw stubs
and the `Client`, and cleanup that destroys every VM and stops the agent."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from kvmplat.client.client import Client
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg

AGENT = str(Path(sys.executable).parent / "kvmplat-agent")


class AgentProc:
    """One running agent: its process, address, state dir, a raw stub and a `Client`."""

    def __init__(self, tmp: Path, *flags: str) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.address = f"unix://{tmp}/agent.sock"
        self.log_path = tmp / "agent.log"
        self._log = self.log_path.open("wb")
        argv = [AGENT, "--listen", self.address, "--state-dir", str(self.state_dir), *flags]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=self._log)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pbg.AgentStub(self.channel)
        self.client = Client(self.address, timeout=30.0)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=2)
                return
            except grpc.RpcError:
                assert self.proc.poll() is None, f"agent exited: {self.log_path.read_text()[-800:]}"
                assert time.monotonic() < deadline, "agent did not answer within 20 s"
                time.sleep(0.05)

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

    def destroy_all(self) -> None:
        """Stops (when needed) and destroys every VM."""
        for vm in self.list_vms().vms:
            req = pb.VmRequest(name=vm.spec.name)
            if vm.state in (pb.RUNNING, pb.PAUSED):
                with contextlib.suppress(grpc.RpcError):
                    self.stub.StopVm(req, timeout=10)
            with contextlib.suppress(grpc.RpcError):
                self.stub.DestroyVm(req, timeout=10)

    def close(self) -> None:
        """Destroys every VM, stops the agent and removes its files."""
        try:
            if self.proc.poll() is None:
                self.destroy_all()
        finally:
            self.client.close()
            self.channel.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
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
