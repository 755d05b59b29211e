"""agent/api/status.py: the one table from agent errors to gRPC codes matches the error tree drawn in agent/errors.py,
and google.rpc.BadRequest details travel only with field violations."""

from __future__ import annotations

import re

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from kvmplat.agent import errors
from kvmplat.agent.api.status import CODES, code_of, to_status
from kvmplat.agent.registry.lifecycle import Event, IllegalTransition, State

DETAILS_KEY = "grpc-status-details-bin"


def documented() -> dict[str, str]:
    """Class name -> code name, as drawn in errors.py's docstring (`Name ... → CODE`)."""
    doc = errors.__doc__ or ""
    return dict(re.findall(r"[├└]── (\w+)\s.*→ (\w+)", doc))


def _status(err: errors.KvmplatError) -> status_pb2.Status:
    """The google.rpc.Status that to_status puts in the trailing metadata."""
    st = to_status(err)
    raw = dict(st.trailing_metadata)[DETAILS_KEY]
    return status_pb2.Status.FromString(raw)


def _instance(cls: type[errors.KvmplatError]) -> errors.KvmplatError:
    if cls is errors.PlatformRefused:
        return cls("abi", "SPAPR", "this host is x86_64", "BARE_METAL")
    if cls is errors.KvmError:
        return cls("KVM_RUN", "vcpu", 4)
    return cls("something went wrong")


def test_the_table_matches_the_documented_tree() -> None:
    doc = documented()
    assert {cls.__name__ for cls, _ in CODES} <= set(doc)
    for cls, code in CODES:
        assert doc[cls.__name__] == code.name, cls.__name__


@pytest.mark.parametrize(("cls", "code"), CODES, ids=[c.__name__ for c, _ in CODES])
def test_every_class_maps_to_its_code(cls: type[errors.KvmplatError], code: grpc.StatusCode) -> None:
    err = _instance(cls)
    assert code_of(err) is code
    st = to_status(err)
    assert st.code is code and st.details == str(err)
    proto = _status(err)
    assert proto.code == getattr(code_pb2, code.name) and proto.message == str(err)


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (IllegalTransition("vm", State.STOPPED, Event.PAUSE), grpc.StatusCode.FAILED_PRECONDITION),
        (_instance(errors.PlatformRefused), grpc.StatusCode.FAILED_PRECONDITION),
        (_instance(errors.KvmError), grpc.StatusCode.INTERNAL),
        (errors.KvmplatError("base"), grpc.StatusCode.INTERNAL),
    ],
)
def test_subclasses_take_their_parents_code(err: errors.KvmplatError, code: grpc.StatusCode) -> None:
    assert code_of(err) is code and to_status(err).code is code


def test_bad_request_details_carry_every_violation() -> None:
    err = errors.InvalidArgument("two things", [("spec.vcpus", "must be 1 to 8"), ("spec.name", "bad")])
    proto = _status(err)
    assert len(proto.details) == 1
    br = error_details_pb2.BadRequest()
    assert proto.details[0].Unpack(br)
    assert [(v.field, v.description) for v in br.field_violations] == err.violations


def test_field_helper_names_the_field_in_message_and_details() -> None:
    err = errors.InvalidArgument.field("spec.memory_mib", "must be at least 1")
    assert "spec.memory_mib" in str(err) and err.violations == [("spec.memory_mib", "must be at least 1")]
    assert len(_status(err).details) == 1


@pytest.mark.parametrize("cls", [c for c, _ in CODES], ids=[c.__name__ for c, _ in CODES])
def test_no_details_without_violations(cls: type[errors.KvmplatError]) -> None:
    assert list(_status(_instance(cls)).details) == []
