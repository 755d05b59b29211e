"""Hypothesis over every RPC of a real agent: random and hostile request messages (names, numbers, console bytes,
platforms, and raw bytes that are not a valid message at all) each get INVALID_ARGUMENT, FAILED_PRECONDITION,
NOT_FOUND, ALREADY_EXISTS or RESOURCE_EXHAUSTED — never UNKNOWN or INTERNAL — and leave ListVms exactly as it was.
(PERMISSION_DENIED is proven the same way over mutual TLS in tests/security/test_authz_properties.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from agent_harness import BAD_INPUT_CODES, AgentProc, loop_spec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kvmplat.agent.registry.lifecycle import TRANSITIONS, Event, State
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

VMS = {"keep-created": State.CREATED, "keep-running": State.RUNNING}
VERB_EVENTS = {"StartVm": Event.START, "PauseVm": Event.PAUSE, "ResumeVm": Event.RESUME, "StopVm": Event.STOP}
VERB_EVENTS["DestroyVm"] = Event.DESTROY
READ_ONLY = {"GetCapabilities", "CheckPlatform", "GetVm", "ListVms", "WatchEvents", "WatchEventBatches"}
METHODS = [*READ_ONLY, "CreateVm", *VERB_EVENTS, "WriteConsole"]
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def snapshot(agent: AgentProc) -> list[tuple[Any, ...]]:
    """ListVms without what a running guest changes on its own (its ticks advance last_seq)."""
    vms = agent.stub.ListVms(pb.ListVmsRequest(), timeout=10).vms
    return [(vm.spec.SerializeToString(deterministic=True), vm.state, vm.runner_pid, vm.state_reason) for vm in vms]


@pytest.fixture(scope="module")
def kept(shared_agent: AgentProc) -> Iterator[AgentProc]:
    """The module's agent with one CREATED and one RUNNING VM, checked unchanged at the end."""
    for name, state in VMS.items():
        req = pb.CreateVmRequest(spec=loop_spec(name), start=state is State.RUNNING)
        shared_agent.stub.CreateVm(req, timeout=30)
        shared_agent.wait_state(name, state.value)
    before = snapshot(shared_agent)
    yield shared_agent
    assert snapshot(shared_agent) == before


def refused_or_read(agent: AgentProc, method: str, call: Callable[[], Any]) -> None:
    """Runs `call`: a read-only method may answer; anything else must be refused with a bad-input code. Either way
    ListVms is unchanged."""
    before = snapshot(agent)
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() in BAD_INPUT_CODES, f"{method}: {e.code()} {e.details()}"
    else:
        assert method in READ_ONLY, f"{method} accepted a request that should have been refused"
    assert snapshot(agent) == before, f"{method} changed the VMs"


_names = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        ["", "ghost", "-x", ".x", "a" * 64, "x y", "nl\n", "../keep-running", "keep-running\0", "KEEP-CREATED"]
    ),
)
# (method, VM) pairs the transition table forbids in that VM's state
_illegal = st.sampled_from(
    sorted((m, n) for m, e in VERB_EVENTS.items() for n, s in VMS.items() if (s, e) not in TRANSITIONS)
)


@SETTINGS
@given(method=st.sampled_from([*sorted(VERB_EVENTS), "GetVm"]), name=_names)
def test_vm_requests_with_bad_or_unknown_names(kept: AgentProc, method: str, name: str) -> None:
    if name in VMS:
        return
    rpc = getattr(kept.stub, method)
    refused_or_read(kept, method, lambda: rpc(pb.VmRequest(name=name), timeout=10))
    if method == "GetVm":
        with pytest.raises(grpc.RpcError):
            rpc(pb.VmRequest(name=name), timeout=10)  # a VM that does not exist is never found


@SETTINGS
@given(pair=_illegal)
def test_illegal_transitions_on_real_vms(kept: AgentProc, pair: tuple[str, str]) -> None:
    method, name = pair
    refused_or_read(kept, method, lambda: getattr(kept.stub, method)(pb.VmRequest(name=name), timeout=10))


@SETTINGS
@given(
    name=st.one_of(_names, st.just("keep-created")),
    data=st.one_of(st.binary(max_size=4096), st.sampled_from([b"", b"\0" * 100, b"\xff" * 3000])),
)
def test_console_writes_to_missing_or_not_running_vms(kept: AgentProc, name: str, data: bytes) -> None:
    if name == "keep-running":
        return
    req = pb.WriteConsoleRequest(name=name, data=data)
    refused_or_read(kept, "WriteConsole", lambda: kept.stub.WriteConsole(req, timeout=10))


@SETTINGS
@given(vm=_names, since=st.integers(0, 2**64 - 1), follow=st.booleans())
def test_watching_a_missing_vm(kept: AgentProc, vm: str, since: int, follow: bool) -> None:
    if vm in VMS or vm == "":
        return
    req = pb.WatchEventsRequest(vm=vm, since_seq=since, follow=follow)
    refused_or_read(kept, "WatchEvents-missing", lambda: list(kept.stub.WatchEvents(req, timeout=10)))


@SETTINGS
@given(since=st.integers(0, 2**64 - 1), vm=st.sampled_from(["", *VMS]))
def test_replays_from_any_point_answer(kept: AgentProc, since: int, vm: str) -> None:
    events = list(kept.stub.WatchEvents(pb.WatchEventsRequest(vm=vm, since_seq=since), timeout=10))
    assert all(e.seq > since for e in events)


_enum = st.one_of(st.integers(0, 5), st.integers(-(2**31), 2**31 - 1))
_platform = st.builds(
    pb.PlatformSpec,
    abi=_enum,
    pv=st.lists(_enum, max_size=4),
    compat=st.one_of(st.text(max_size=30), st.sampled_from(["x86-64-v9", "power10", "0x", "0xffffffffffffffffff"])),
    compat_policy=_enum,
    bits=st.integers(0, 2**32 - 1),
    accel=_enum,
)


@SETTINGS
@given(platform=_platform)
def test_check_platform_answers_or_refuses_any_platform(kept: AgentProc, platform: pb.PlatformSpec) -> None:
    req = pb.CheckPlatformRequest(spec=pb.VmSpec(name="chk", vcpus=1, memory_mib=16, platform=platform))
    refused_or_read(kept, "CheckPlatform", lambda: kept.stub.CheckPlatform(req, timeout=10))


@SETTINGS
@given(platform=_platform, name=st.sampled_from(["plat1", *VMS]))
def test_create_with_any_platform_is_refused_or_made(kept: AgentProc, platform: pb.PlatformSpec, name: str) -> None:
    spec = loop_spec(name)
    spec.platform.CopyFrom(platform)
    before = snapshot(kept)
    try:
        kept.stub.CreateVm(pb.CreateVmRequest(spec=spec), timeout=30)
    except grpc.RpcError as e:
        assert e.code() in BAD_INPUT_CODES, f"{e.code()} {e.details()}"
        assert snapshot(kept) == before
        return
    kept.stub.DestroyVm(pb.VmRequest(name=name), timeout=10)  # a platform this host runs: a fine request
    assert snapshot(kept) == before


@SETTINGS
@given(method=st.sampled_from(METHODS), data=st.one_of(st.binary(min_size=1, max_size=512), st.just(b"\xff\xff\xff")))
@example(method="WatchEvents", data=b"\x18\x01")  # follow: true
@example(method="WatchEventBatches", data=b"\x0a\x01\x2f\x18\x01")  # a bad VM name, and follow
def test_raw_bytes_never_get_unknown_or_internal(kept: AgentProc, method: str, data: bytes) -> None:
    full = f"/kvmplat.v1.Agent/{method}"
    if method in ("WatchEvents", "WatchEventBatches"):
        call = kept.channel.unary_stream(full)
        if _follows(data):  # the bytes ask to follow: such a stream runs until its deadline, unless it is refused
            with pytest.raises(grpc.RpcError) as info:
                list(call(data, timeout=2))
            assert info.value.code() in {*BAD_INPUT_CODES, grpc.StatusCode.DEADLINE_EXCEEDED}, info.value.details()
            return
        refused_or_read(kept, method, lambda: list(call(data, timeout=10)))
        return
    if method not in READ_ONLY and _parses_to_a_real_request(method, data):
        return  # the bytes happen to be a valid request for a VM that exists
    refused_or_read(kept, method, lambda: kept.channel.unary_unary(full)(data, timeout=10))


def _follows(data: bytes) -> bool:
    """Whether `data` decodes as a WatchEventsRequest with `follow` set (found by Hypothesis: b"\\x18\\x01")."""
    msg = pb.WatchEventsRequest()
    try:
        msg.ParseFromString(data)
    except Exception:
        return False
    return bool(msg.follow)


def _parses_to_a_real_request(method: str, data: bytes) -> bool:
    """Whether `data` decodes as a request naming one of the module's VMs (for CreateVm: never knowingly)."""
    if method == "CreateVm":
        return False  # bytes that decode to a whole valid spec are beyond chance; if they did, the test says so
    msg: Any = pb.WriteConsoleRequest() if method == "WriteConsole" else pb.VmRequest()
    try:
        msg.ParseFromString(data)
    except Exception:
        return False
    return str(msg.name) in VMS


@SETTINGS
@given(data=st.binary(min_size=1, max_size=256))
def test_garbage_to_health_and_reflection_is_invalid_argument_and_they_still_work(kept: AgentProc, data: bytes) -> None:
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    try:
        health_pb2.HealthCheckRequest.FromString(data)
        decodes = True
    except Exception:
        decodes = False
    check = kept.channel.unary_unary("/grpc.health.v1.Health/Check")
    reflect = kept.channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    for call in (lambda: check(data, timeout=10), lambda: list(reflect(iter([data]), timeout=10))):
        try:
            call()
        except grpc.RpcError as e:
            assert e.code() in BAD_INPUT_CODES, f"{e.code()} {e.details()}"
            if not decodes and e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                pytest.fail(f"undecodable bytes got {e.code()}")
    assert "kvmplat.v1.Agent" in ProtoReflectionDescriptorDatabase(kept.channel).get_services()
