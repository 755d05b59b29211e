"""The gRPC edge of the error tree: one table from agent errors to status codes, with BadRequest details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from kvmplat.agent import errors

__all__ = ["CODES", "to_status"]

# Most specific first: the first class an error is an instance of decides its code.
CODES: tuple[tuple[type[errors.KvmplatError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.HostError, grpc.StatusCode.INTERNAL),
)


def code_of(err: errors.KvmplatError) -> grpc.StatusCode:
    """The status code of an agent error."""
    for cls, code in CODES:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(err: errors.KvmplatError) -> grpc.Status:
    """A grpc.Status carrying the message and, for bad input, google.rpc.BadRequest field violations."""
    code = code_of(err)
    st = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(err))
    violations = getattr(err, "violations", None)
    if violations:
        br = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(br)
        st.details.append(detail)
    return rpc_status.to_status(st)
