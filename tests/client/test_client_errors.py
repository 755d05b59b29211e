"""The client's error tree: the one code table, BadRequest decoding, and telling an agent's UNAVAILABLE from a
connection failure. Calls go to the fake agent (a real in-process gRPC server, see fake_agent_server.py)."""

from __future__ import annotations

import grpc
import pytest
from fake_agent_server import FakeAgentServer
from kvmplat.client import errors
from kvmplat.client.agent import Client
from kvmplat.v1 import agent_pb2 as pb


def test_every_status_code_maps_to_a_client_error() -> None:
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            assert code in errors.ERRORS_BY_CODE, code


@pytest.mark.parametrize(
    ("code", "cls", "refusal"),
    [
        ("INVALID_ARGUMENT", errors.InvalidArgument, True),
        ("NOT_FOUND", errors.NotFound, True),
        ("ALREADY_EXISTS", errors.AlreadyExists, True),
        ("FAILED_PRECONDITION", errors.FailedPrecondition, True),
        ("RESOURCE_EXHAUSTED", errors.ResourceExhausted, True),
        ("PERMISSION_DENIED", errors.PermissionDenied, True),
        ("INTERNAL", errors.AgentFailed, True),
        ("DEADLINE_EXCEEDED", errors.DeadlineExceeded, False),
    ],
)
def test_table_is_the_inverse_of_the_agents(code: str, cls: type[errors.KvmplatError], refusal: bool) -> None:
    mapped = errors.ERRORS_BY_CODE[grpc.StatusCode[code]]
    assert mapped is cls
    assert issubclass(mapped, errors.Unreachable) is not refusal


def test_bad_request_violations_are_decoded(fake_agent: FakeAgentServer) -> None:
    with Client(fake_agent.address) as c, pytest.raises(errors.InvalidArgument) as info:
        c.create_vm(pb.VmSpec(name="a", vcpus=0, memory_mib=16))
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.violations == (("spec.vcpus", "must be at least 1"),)
    assert info.value.one_line() == "spec.vcpus: must be at least 1"


def test_violations_not_in_the_message_are_appended() -> None:
    e = errors.InvalidArgument("bad spec", "INVALID_ARGUMENT", (("spec.vcpus", "must be at least 1"),))
    assert str(e) == "bad spec; spec.vcpus: must be at least 1"


def test_not_found_and_precondition(fake_agent: FakeAgentServer) -> None:
    with Client(fake_agent.address) as c:
        with pytest.raises(errors.NotFound, match="no VM named 'x'"):
            c.get_vm("x")
        c.create_vm(pb.VmSpec(name="a", vcpus=1, memory_mib=16))
        with pytest.raises(errors.FailedPrecondition, match="cannot pause VM 'a': it is CREATED"):
            c.pause_vm("a")
        with pytest.raises(errors.AlreadyExists):
            c.create_vm(pb.VmSpec(name="a", vcpus=1, memory_mib=16))


def test_unavailable_from_the_agent_is_a_refusal(fake_agent: FakeAgentServer) -> None:
    with Client(fake_agent.address) as c, pytest.raises(errors.Unavailable) as info:
        c.get_vm("flaky")
    assert not isinstance(info.value, errors.Unreachable)


def test_no_agent_is_unreachable_naming_the_address(tmp_path: object) -> None:
    address = "unix:///nonexistent/kvmplat-test.sock"
    with Client(address, timeout=2) as c, pytest.raises(errors.Unreachable) as info:
        c.capabilities()
    assert address in str(info.value)
    assert "\n" not in info.value.one_line()


class _FakeCall(grpc.RpcError):  # type: ignore[misc]
    """A stand-in for a failed call, for the text fallback that needs no channel."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_without_a_channel_transport_wording_decides() -> None:
    lost = errors.from_rpc_error(_FakeCall(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"))
    said = errors.from_rpc_error(_FakeCall(grpc.StatusCode.UNAVAILABLE, "runner of 'a' cannot be reached"))
    assert type(lost) is errors.Unreachable
    assert type(said) is errors.Unavailable


def test_deadline_names_the_address() -> None:
    e = errors.from_rpc_error(_FakeCall(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "unix:///a.sock")
    assert isinstance(e, errors.DeadlineExceeded)
    assert "unix:///a.sock" in str(e)
