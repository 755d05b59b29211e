"""Remote access is mutual TLS with roles: the TLS handshake refuses clients without a certificate from the
configured CA; `--authz` admits named certificates as reader or operator and refuses the rest with
PERMISSION_DENIED naming the role needed. Without `--authz` every verified client is an operator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kvmplat.v1 import agent_pb2 as pb
from tls_harness import TlsAgent, channel, start_tls_agent

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]


def spec(name: str) -> pb.VmSpec:
    """A tiny `loop` guest."""
    return pb.VmSpec(name=name, vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"))


def refused(call: Callable[[], Any], code: grpc.StatusCode, *named: str) -> str:
    """Runs `call`, which must fail with `code` and details containing every string in `named`."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    assert err.code() == code, f"{err.code()} {err.details()}"
    for text in named:
        assert text in err.details(), f"{text!r} not in {err.details()!r}"
    return str(err.details())


@pytest.mark.parametrize("who", [None, "rogue"], ids=["no-client-cert", "rogue-ca"])
def test_handshake_refuses_clients_without_a_cert_from_the_ca(roles_agent: TlsAgent, who: str | None) -> None:
    st = roles_agent.stub(who)
    refused(lambda: st.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=3), grpc.StatusCode.UNAVAILABLE)
    refused(lambda: st.CreateVm(pb.CreateVmRequest(spec=spec("rogue-vm")), timeout=3), grpc.StatusCode.UNAVAILABLE)
    assert all(vm.spec.name != "rogue-vm" for vm in roles_agent.stub("operator").ListVms(pb.ListVmsRequest()).vms)


def test_unknown_common_name_is_refused_everywhere(roles_agent: TlsAgent) -> None:
    st = roles_agent.stub("stranger")
    denied = grpc.StatusCode.PERMISSION_DENIED
    refused(lambda: st.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=5), denied, "reader", "'stranger'")
    refused(lambda: st.ListVms(pb.ListVmsRequest(), timeout=5), denied, "not named")
    refused(lambda: list(st.WatchEvents(pb.WatchEventsRequest(), timeout=5)), denied, "reader")
    refused(lambda: st.CreateVm(pb.CreateVmRequest(spec=spec("s1")), timeout=5), denied, "needs role operator")
    ch = channel(roles_agent.port, roles_agent.pki, "stranger")
    health = health_pb2_grpc.HealthStub(ch)
    refused(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5), denied, "reader")


def test_reader_reads_but_may_not_change_anything(roles_agent: TlsAgent) -> None:
    op, rd = roles_agent.stub("operator"), roles_agent.stub("reader")
    op.CreateVm(pb.CreateVmRequest(spec=spec("r-vm")), timeout=30)
    try:
        assert rd.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=5).agent_version
        assert [v.spec.name for v in rd.ListVms(pb.ListVmsRequest(), timeout=5).vms] == ["r-vm"]
        assert rd.GetVm(pb.VmRequest(name="r-vm"), timeout=5).state == pb.CREATED
        assert list(rd.WatchEvents(pb.WatchEventsRequest(vm="r-vm"), timeout=5))
        rd.CheckPlatform(pb.CheckPlatformRequest(spec=spec("x")), timeout=5)
        denied = grpc.StatusCode.PERMISSION_DENIED
        for call in (
            lambda: rd.CreateVm(pb.CreateVmRequest(spec=spec("r-new")), timeout=5),
            lambda: rd.StartVm(pb.VmRequest(name="r-vm"), timeout=5),
            lambda: rd.DestroyVm(pb.VmRequest(name="r-vm"), timeout=5),
            lambda: rd.WriteConsole(pb.WriteConsoleRequest(name="r-vm", data=b"x"), timeout=5),
        ):
            refused(call, denied, "needs role operator", "'reader' has role reader")
        assert [v.spec.name for v in rd.ListVms(pb.ListVmsRequest(), timeout=5).vms] == ["r-vm"]
        assert rd.GetVm(pb.VmRequest(name="r-vm"), timeout=5).state == pb.CREATED
    finally:
        op.DestroyVm(pb.VmRequest(name="r-vm"), timeout=30)


def test_operator_drives_the_whole_lifecycle(roles_agent: TlsAgent) -> None:
    op = roles_agent.stub("operator")
    req = pb.VmRequest(name="o-vm")
    assert op.CreateVm(pb.CreateVmRequest(spec=spec("o-vm"), start=True), timeout=30).spec.name == "o-vm"
    op.PauseVm(req, timeout=10)
    op.ResumeVm(req, timeout=10)
    op.StopVm(req, timeout=10)
    op.DestroyVm(req, timeout=10)
    refused(lambda: op.GetVm(req, timeout=5), grpc.StatusCode.NOT_FOUND)


def test_without_authz_every_verified_client_is_operator(pki: Path) -> None:
    ta = start_tls_agent(pki)
    try:
        st = ta.stub("stranger")
        st.CreateVm(pb.CreateVmRequest(spec=spec("any")), timeout=30)
        st.DestroyVm(pb.VmRequest(name="any"), timeout=30)
        refused(lambda: ta.stub("rogue").ListVms(pb.ListVmsRequest(), timeout=3), grpc.StatusCode.UNAVAILABLE)
    finally:
        ta.agent.close(ta.stub("operator"))
