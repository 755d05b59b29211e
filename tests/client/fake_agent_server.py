"""A FAKE kvmplat agent for the client's unit tests: a real gRPC server (in-process, on a unix socket) implementing
the generated AgentServicer just far enough to answer and to refuse like the real agent does (the codes and rich
details the contract names). It runs no guests and knows nothing of KVM; the real agent is exercised by
tests/e2e/test_cli_e2e.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pb_grpc

S = pb.VmState
# (state, verb) -> next state; a miniature of the agent's transition table, enough to provoke refusals.
_NEXT = {
    (S.CREATED, "start"): S.RUNNING,
    (S.RUNNING, "pause"): S.PAUSED,
    (S.PAUSED, "resume"): S.RUNNING,
    (S.CREATED, "stop"): S.STOPPED,
    (S.RUNNING, "stop"): S.STOPPED,
    (S.PAUSED, "stop"): S.STOPPED,
}


def _bad_request(context: Any, field: str, description: str) -> None:
    """Aborts with INVALID_ARGUMENT carrying a google.rpc.BadRequest, as the agent does."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[{"field": field, "description": description}]))
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=f"{field}: {description}", details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


class FakeAgent(pb_grpc.AgentServicer):  # type: ignore[misc]
    """VM records and events in memory; refusals with the contract's codes."""

    def __init__(self) -> None:
        self.vms: dict[str, pb.Vm] = {}
        self.events: list[pb.Event] = []
        self.console_in: list[bytes] = []
        self.cond = threading.Condition()

    def _event(self, vm: pb.Vm, **kind: Any) -> None:
        with self.cond:
            vm.last_seq += 1
            self.events.append(pb.Event(seq=vm.last_seq, vm=vm.spec.name, **kind))
            self.cond.notify_all()

    def _vm(self, name: str, context: Any) -> pb.Vm:
        if name == "flaky":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the runner of 'flaky' cannot be reached")
        if name not in self.vms:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no VM named {name!r}")
        return self.vms[name]

    def _move(self, name: str, verb: str, context: Any) -> pb.Vm:
        vm = self._vm(name, context)
        to = _NEXT.get((vm.state, verb))
        if to is None:
            state = S.Name(vm.state)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot {verb} VM {name!r}: it is {state}")
        self._event(vm, state=pb.StateChange(**{"from": vm.state, "to": to}))
        vm.state = to
        vm.runner_pid = 4242 if to in (S.RUNNING, S.PAUSED) else 0
        return vm

    def GetCapabilities(self, request: pb.GetCapabilitiesRequest, context: Any) -> pb.Capabilities:
        return pb.Capabilities(arch="x86_64", kvm_api_version=12, max_vcpus=8, abis=[pb.BARE_METAL], accels=["kvm"])

    def CheckPlatform(self, request: pb.CheckPlatformRequest, context: Any) -> pb.CheckPlatformResponse:
        if request.spec.platform.abi == pb.SPAPR:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "platform.abi SPAPR cannot be honoured: host is x86_64")
        notes = ["platform only"] if request.platform_only else []  # what the CLI asked, for its tests
        return pb.CheckPlatformResponse(
            effective_platform=pb.EffectivePlatform(abi=pb.BARE_METAL, accel="kvm", notes=notes)
        )

    def CreateVm(self, request: pb.CreateVmRequest, context: Any) -> pb.Vm:
        spec = request.spec
        if spec.vcpus == 0:
            _bad_request(context, "spec.vcpus", "must be at least 1")
        if spec.name in self.vms:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"a VM named {spec.name!r} exists already")
        vm = pb.Vm(spec=spec, state=S.CREATED, effective_platform=pb.EffectivePlatform(abi=pb.BARE_METAL, accel="kvm"))
        self.vms[spec.name] = vm
        self._event(vm, state=pb.StateChange(to=S.CREATED, reason="created"))
        return self.StartVm(pb.VmRequest(name=spec.name), context) if request.start else vm

    def _run_probe(self, vm: pb.Vm) -> None:
        """A `probe` guest prints one line per vCPU and powers off, as the real one does."""
        for cpu in range(vm.spec.vcpus):
            self._event(vm, console=pb.ConsoleText(text=f"kvmplat-probe cpu {cpu}\n"))
        self._event(vm, state=pb.StateChange(**{"from": vm.state, "to": S.STOPPED, "reason": "guest poweroff"}))
        vm.state, vm.runner_pid = S.STOPPED, 0

    def StartVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        vm = self._move(request.name, "start", context)
        if vm.spec.boot.builtin == "probe":
            self._run_probe(vm)
        return vm

    def PauseVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        return self._move(request.name, "pause", context)

    def ResumeVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        return self._move(request.name, "resume", context)

    def StopVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        return self._move(request.name, "stop", context)

    def DestroyVm(self, request: pb.VmRequest, context: Any) -> pb.DestroyVmResponse:
        self._vm(request.name, context)
        del self.vms[request.name]
        return pb.DestroyVmResponse()

    def GetVm(self, request: pb.VmRequest, context: Any) -> pb.Vm:
        return self._vm(request.name, context)

    def ListVms(self, request: pb.ListVmsRequest, context: Any) -> pb.ListVmsResponse:
        return pb.ListVmsResponse(vms=list(self.vms.values()))

    def WriteConsole(self, request: pb.WriteConsoleRequest, context: Any) -> pb.WriteConsoleResponse:
        vm = self._vm(request.name, context)
        self.console_in.append(request.data)
        self._event(vm, console=pb.ConsoleText(text=request.data.decode(errors="replace") + "\n"))
        return pb.WriteConsoleResponse()

    def WatchEvents(self, request: pb.WatchEventsRequest, context: Any) -> Iterator[pb.Event]:
        if request.vm:
            self._vm(request.vm, context)
        sent = 0
        while True:
            with self.cond:
                fresh = self.events[sent:]
                sent = len(self.events)
            for event in fresh:
                if (not request.vm or event.vm == request.vm) and event.seq > request.since_seq:
                    yield event
            if not request.follow or not context.is_active():
                return
            with self.cond:
                if len(self.events) == sent:
                    self.cond.wait(timeout=0.05)


class FakeAgentServer:
    """The fake agent served on `address` (unix:///...), started and stopped as a context manager."""

    def __init__(self, socket_path: str) -> None:
        self.address = f"unix://{socket_path}"
        self.agent = FakeAgent()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_AgentServicer_to_server(self.agent, self.server)
        self.server.add_insecure_port(self.address)

    def __enter__(self) -> FakeAgentServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)


def serve_main(argv: list[str]) -> None:
    """`python fake_agent_server.py --listen unix:///PATH --state-dir DIR`: the fake agent as a process, until SIGTERM
    (stands in for kvmplat-agent when testing `kvmplat demo`'s start-up and clean-up)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeAgentServer(args.listen.removeprefix("unix://")):
        stop.wait()


if __name__ == "__main__":
    import sys

    serve_main(sys.argv[1:])
