"""Hypothesis over the roles: whatever the request (random names, specs, console bytes, or bytes that are not a
message at all), a certificate not named in --authz is PERMISSION_DENIED on every method and a reader on every
method that changes something, the refusal names the role needed, nothing is ever UNKNOWN or INTERNAL, and ListVms
(read by the operator) is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvmplat.agent.api.authz import READER_METHODS
from kvmplat.v1 import agent_pb2 as pb
from tls_harness import TlsAgent, channel

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

AGENT = "/kvmplat.v1.Agent/"
MUTATING = ["CreateVm", "StartVm", "PauseVm", "ResumeVm", "StopVm", "DestroyVm", "WriteConsole"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def channels(roles_agent: TlsAgent) -> Iterator[dict[str, grpc.Channel]]:
    """One channel per certificate, and a RUNNING VM the operator made (checked unchanged at the end)."""
    chans = {who: channel(roles_agent.port, roles_agent.pki, who) for who in ("operator", "reader", "stranger")}
    op = roles_agent.stub("operator")
    spec = pb.VmSpec(name="prop-vm", vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"))
    op.CreateVm(pb.CreateVmRequest(spec=spec, start=True), timeout=30)
    before = listing(chans["operator"])
    yield chans
    assert listing(chans["operator"]) == before
    op.StopVm(pb.VmRequest(name="prop-vm"), timeout=30)
    op.DestroyVm(pb.VmRequest(name="prop-vm"), timeout=30)
    for ch in chans.values():
        ch.close()


def listing(ch: grpc.Channel) -> list[tuple[Any, ...]]:
    """ListVms (names, states, pids, reasons) as the operator sees it."""
    call = ch.unary_unary(AGENT + "ListVms", pb.ListVmsRequest.SerializeToString, pb.ListVmsResponse.FromString)
    return [
        (vm.spec.name, vm.state, vm.runner_pid, vm.state_reason) for vm in call(pb.ListVmsRequest(), timeout=10).vms
    ]


_name = st.one_of(st.just("prop-vm"), st.text(max_size=40))
_requests = {
    "CreateVm": st.builds(
        lambda n, v, m: pb.CreateVmRequest(
            spec=pb.VmSpec(name=n, vcpus=v, memory_mib=m, boot=pb.BootSpec(builtin="loop")), start=True
        ),
        st.one_of(st.just("prop-new"), st.text(max_size=40)),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**64 - 1),
    ),
    "WriteConsole": st.builds(lambda n, d: pb.WriteConsoleRequest(name=n, data=d), _name, st.binary(max_size=256)),
}
_raw = st.one_of(st.binary(max_size=256), st.just(b"\xff\xff\xff"))


def request_bytes(method: str, draw: st.DrawFn) -> bytes:
    """A serialized request for `method`, or raw bytes."""
    if draw(st.booleans()):
        return draw(_raw)
    strategy = _requests.get(method, st.builds(lambda n: pb.VmRequest(name=n), _name))
    msg: Any = draw(strategy)
    return bytes(msg.SerializeToString())


@SETTINGS
@given(data=st.data(), who=st.sampled_from(["reader", "stranger"]), method=st.sampled_from(MUTATING))
def test_changes_are_denied_below_operator(
    channels: dict[str, grpc.Channel], data: st.DataObject, who: str, method: str
) -> None:
    before = listing(channels["operator"])
    payload = request_bytes(method, data.draw)
    with pytest.raises(grpc.RpcError) as info:
        channels[who].unary_unary(AGENT + method)(payload, timeout=10)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, f"{who} {method}: {err.code()} {err.details()}"
    assert "needs role operator" in err.details()
    assert listing(channels["operator"]) == before


@SETTINGS
@given(data=st.data(), method=st.sampled_from(sorted(m.rsplit("/", 1)[1] for m in READER_METHODS)))
def test_a_stranger_reads_nothing_and_a_reader_never_gets_unknown(
    channels: dict[str, grpc.Channel], data: st.DataObject, method: str
) -> None:
    payload = data.draw(_raw)
    call = (channels["stranger"].unary_stream if method == "WatchEvents" else channels["stranger"].unary_unary)(
        AGENT + method
    )
    with pytest.raises(grpc.RpcError) as info:
        list(call(payload, timeout=10)) if method == "WatchEvents" else call(payload, timeout=10)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "needs role reader" in err.details()
    reader = channels["reader"]
    try:
        if method == "WatchEvents":
            list(reader.unary_stream(AGENT + method)(payload, timeout=10))
        else:
            reader.unary_unary(AGENT + method)(payload, timeout=10)
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), f"{e.code()} {e.details()}"
