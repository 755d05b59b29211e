"""Bad input against the real agent over gRPC: each gets its exact status code, a message naming what was wrong
(google.rpc.BadRequest field violations for INVALID_ARGUMENT), and leaves ListVms exactly as it was.
Every illegal lifecycle transition is walked against agent/registry/lifecycle.py's table, and hypothesis throws
random specs."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from agent_harness import BAD_INPUT_CODES, AgentFactory, AgentProc, loop_spec
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvmplat.agent.registry.lifecycle import TRANSITIONS, Event, State
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

VERBS = {Event.START: "StartVm", Event.PAUSE: "PauseVm", Event.RESUME: "ResumeVm", Event.STOP: "StopVm"}


def snapshot(agent: AgentProc) -> list[tuple[Any, ...]]:
    """ListVms without the fields a running guest changes on its own (its console ticks advance last_seq)."""
    return [
        (vm.spec.SerializeToString(deterministic=True), vm.state, vm.runner_pid, vm.state_reason)
        for vm in agent.list_vms().vms
    ]


def refused(call: Callable[[], Any], code: grpc.StatusCode, *named: str) -> grpc.RpcError:
    """Runs `call`, which must fail with `code` and a message containing every string in `named`."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert err.code() == code, f"{err.code()} {err.details()}"
    for text in named:
        assert text in err.details(), f"{text!r} not in {err.details()!r}"
    return err


def violations(err: grpc.RpcError) -> dict[str, str]:
    """The BadRequest field violations of an INVALID_ARGUMENT status, by field."""
    status = rpc_status.from_call(err)
    assert status is not None, "INVALID_ARGUMENT without rich status details"
    out: dict[str, str] = {}
    for detail in status.details:
        br = error_details_pb2.BadRequest()
        assert detail.Unpack(br), f"unexpected detail {detail.type_url}"
        out |= {v.field: v.description for v in br.field_violations}
    return out


def invalid(call: Callable[[], Any], field: str, *named: str) -> dict[str, str]:
    """INVALID_ARGUMENT with a BadRequest violation of `field`; returns all violations."""
    found = violations(refused(call, grpc.StatusCode.INVALID_ARGUMENT, field, *named))
    assert field in found, f"no violation of {field}: {found}"
    return found


@pytest.fixture
def populated(agent: AgentProc) -> Iterator[AgentProc]:
    """An agent with one CREATED and one RUNNING VM, so 'nothing changed' is checked against real records."""
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("keep-created")), timeout=30)
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("keep-running"), start=True), timeout=30)
    before = snapshot(agent)
    yield agent
    assert snapshot(agent) == before


VM_RPCS = ["StartVm", "PauseVm", "ResumeVm", "StopVm", "DestroyVm", "GetVm"]


@pytest.mark.parametrize("rpc", VM_RPCS)
def test_unknown_vm_is_not_found_for_every_vm_rpc(populated: AgentProc, rpc: str) -> None:
    refused(
        lambda: getattr(populated.stub, rpc)(pb.VmRequest(name="ghost"), timeout=10), grpc.StatusCode.NOT_FOUND, "ghost"
    )


def test_unknown_vm_console_and_events_are_not_found(populated: AgentProc) -> None:
    stub = populated.stub
    refused(
        lambda: stub.WriteConsole(pb.WriteConsoleRequest(name="ghost", data=b"x"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "ghost",
    )
    refused(
        lambda: list(stub.WatchEvents(pb.WatchEventsRequest(vm="ghost"), timeout=10)),
        grpc.StatusCode.NOT_FOUND,
        "ghost",
    )


def _create(agent: AgentProc, spec: pb.VmSpec) -> Callable[[], Any]:
    return lambda: agent.stub.CreateVm(pb.CreateVmRequest(spec=spec), timeout=30)


def test_vcpus_zero_and_above_host_maximum(populated: AgentProc) -> None:
    caps = populated.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
    invalid(_create(populated, loop_spec("v0", vcpus=0)), "spec.vcpus", "spec.vcpus")
    found = invalid(_create(populated, loop_spec("vmax", vcpus=caps.max_vcpus + 1)), "spec.vcpus")
    assert str(caps.max_vcpus) in found["spec.vcpus"]


def test_memory_zero_and_above_host_memory(populated: AgentProc) -> None:
    caps = populated.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
    invalid(_create(populated, loop_spec("m0", memory_mib=0)), "spec.memory_mib")
    found = invalid(_create(populated, loop_spec("mmax", memory_mib=caps.memory_mib + 1)), "spec.memory_mib")
    assert str(caps.memory_mib) in found["spec.memory_mib"]


def test_several_violations_are_reported_together(populated: AgentProc) -> None:
    spec = pb.VmSpec(name="-bad", vcpus=0, memory_mib=0)
    found = invalid(_create(populated, spec), "spec.name")
    assert {"spec.name", "spec.vcpus", "spec.memory_mib", "spec.boot"} <= set(found)


def test_duplicate_name_already_exists(populated: AgentProc) -> None:
    for name in ("keep-created", "keep-running"):
        refused(_create(populated, loop_spec(name)), grpc.StatusCode.ALREADY_EXISTS, name)


BAD_NAMES = [
    "",
    "-lead",
    ".hidden",
    "_under",
    "a" * 64,
    "with space",
    "slash/name",
    "../up",
    "ünï",
    "tab\tname",
    "nl\n",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_invalid(populated: AgentProc, name: str) -> None:
    invalid(_create(populated, loop_spec(name)), "spec.name")
    if name:
        invalid(lambda: populated.stub.GetVm(pb.VmRequest(name=name), timeout=10), "name")


def test_unknown_builtin_and_missing_boot(populated: AgentProc) -> None:
    invalid(_create(populated, loop_spec("b1", builtin="outloop")), "spec.boot.builtin", "outloop")
    invalid(_create(populated, loop_spec("b2", builtin="doom")), "spec.boot.builtin", "doom")
    invalid(_create(populated, pb.VmSpec(name="b3", vcpus=1, memory_mib=16)), "spec.boot")


@pytest.mark.parametrize(
    "kernel", ["/etc/passwd", "/proc/self/environ", "vmlinuz", "/var/lib/kvmplat/images/../../../etc/shadow"]
)
def test_kernel_outside_image_dirs_is_invalid(populated: AgentProc, kernel: str) -> None:
    spec = pb.VmSpec(name="k1", vcpus=1, memory_mib=16, boot=pb.BootSpec(kernel=kernel))
    invalid(_create(populated, spec), "spec.boot.kernel", kernel)


def test_initrd_outside_image_dirs_is_invalid(populated: AgentProc, tmp_path: Any) -> None:
    spec = pb.VmSpec(name="k2", vcpus=1, memory_mib=16, boot=pb.BootSpec(kernel="/etc/hostname", initrd="/etc/hosts"))
    found = invalid(_create(populated, spec), "spec.boot.initrd", "/etc/hosts")
    assert "spec.boot.kernel" in found


def test_beyond_what_is_left_is_resource_exhausted(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--max-memory-mib", "64", "--max-vcpus", "2")
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("big", memory_mib=48)), timeout=30)
    before = snapshot(agent)
    refused(_create(agent, loop_spec("more", memory_mib=32)), grpc.StatusCode.RESOURCE_EXHAUSTED, "16 MiB", "left")
    refused(_create(agent, loop_spec("wide", vcpus=2)), grpc.StatusCode.RESOURCE_EXHAUSTED, "1 vCPU", "left")
    assert snapshot(agent) == before
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("fits", memory_mib=16)), timeout=30)
    refused(_create(agent, loop_spec("full", memory_mib=1)), grpc.StatusCode.RESOURCE_EXHAUSTED, "0 MiB")


# --- every illegal transition ------------------------------------------------------------------------------------
def _bring_to(agent: AgentProc, name: str, state: State) -> None:
    """Creates VM `name` and drives it into `state` (CRASHED: SIGKILL of its runner)."""
    agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec(name), start=state is not State.CREATED), timeout=30)
    req = pb.VmRequest(name=name)
    if state is State.PAUSED:
        agent.stub.PauseVm(req, timeout=10)
    elif state is State.STOPPED:
        agent.stub.StopVm(req, timeout=10)
    elif state is State.CRASHED:
        os.kill(agent.get(name).runner_pid, signal.SIGKILL)
    agent.wait_state(name, state.value)


def _request(agent: AgentProc, name: str, event: Event) -> Callable[[], Any]:
    rpc = "DestroyVm" if event is Event.DESTROY else VERBS[event]
    return lambda: getattr(agent.stub, rpc)(pb.VmRequest(name=name), timeout=10)


CALLER_EVENTS = [Event.START, Event.PAUSE, Event.RESUME, Event.STOP, Event.DESTROY]
LIVE_STATES = [State.CREATED, State.RUNNING, State.PAUSED, State.STOPPED, State.CRASHED]


@pytest.mark.parametrize("state", LIVE_STATES, ids=lambda s: s.name)
def test_every_illegal_transition_is_failed_precondition(shared_agent: AgentProc, state: State) -> None:
    name = f"walk-{state.name.lower()}"
    _bring_to(shared_agent, name, state)
    illegal = [e for e in CALLER_EVENTS if (state, e) not in TRANSITIONS]
    assert illegal, f"the table allows everything in {state.name}?"
    before = snapshot(shared_agent)
    for event in illegal:
        refused(_request(shared_agent, name, event), grpc.StatusCode.FAILED_PRECONDITION, state.name, event.value, name)
        assert snapshot(shared_agent) == before, f"{event.value} in {state.name} changed something"
    if (state, Event.STOP) in TRANSITIONS:
        shared_agent.stub.StopVm(pb.VmRequest(name=name), timeout=10)
    shared_agent.stub.DestroyVm(pb.VmRequest(name=name), timeout=10)
    assert name not in [vm.spec.name for vm in shared_agent.list_vms().vms]


# --- hypothesis: random specs ------------------------------------------------------------------------------------
_names = st.one_of(
    st.from_regex(r"\Ahyp[a-z0-9]{1,8}\Z"),
    st.text(max_size=70),
    st.sampled_from(["", "-x", "a" * 64, "x y", "nl\n", "../x", "keep"]),
)
_u32 = st.one_of(st.sampled_from([0, 1, 2, 4, 255, 256, 1024]), st.integers(0, 2**32 - 1))
_mem = st.one_of(st.sampled_from([0, 1, 2, 16, 64, 10**7, 2**40]), st.integers(0, 2**64 - 1))
_enum = st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))
_platform = st.builds(
    pb.PlatformSpec,
    abi=_enum,
    pv=st.lists(_enum, max_size=3),
    compat=st.one_of(
        st.sampled_from(["", "x86-64-v2", "X86-64-V3", "power8", "0x0f000004", "zz"]), st.text(max_size=20)
    ),
    compat_policy=_enum,
    bits=st.sampled_from([0, 32, 64, 16, 2**32 - 1]),
    accel=_enum,
)
_boot = st.one_of(
    st.just(pb.BootSpec()),
    st.builds(pb.BootSpec, builtin=st.one_of(st.sampled_from(["probe", "loop", "outloop", ""]), st.text(max_size=10))),
    st.builds(
        pb.BootSpec,
        kernel=st.sampled_from(["/etc/passwd", "rel/path", "/var/lib/kvmplat/images/none", "", "/dev/zero"]),
        initrd=st.sampled_from(["", "/etc/hosts"]),
        cmdline=st.sampled_from(["", "console=ttyS0", "a\0b", "x" * 5000]),
    ),
    st.builds(pb.BootSpec, builtin=st.just("loop"), cmdline=st.just("quiet")),
)
_specs = st.builds(
    pb.VmSpec, name=_names, vcpus=_u32, memory_mib=_mem, platform=st.one_of(st.none(), _platform), boot=_boot
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_specs)
def test_random_specs_get_a_bad_input_code_and_change_nothing(shared_agent: AgentProc, spec: pb.VmSpec) -> None:
    before = snapshot(shared_agent)
    try:
        vm = shared_agent.stub.CreateVm(pb.CreateVmRequest(spec=spec), timeout=30)
    except grpc.RpcError as e:
        assert e.code() in BAD_INPUT_CODES, f"{e.code()} {e.details()} for {spec}"
        assert snapshot(shared_agent) == before
        return
    assert vm.state == pb.CREATED and vm.spec.name == spec.name
    shared_agent.stub.DestroyVm(pb.VmRequest(name=spec.name), timeout=10)
    assert snapshot(shared_agent) == before
