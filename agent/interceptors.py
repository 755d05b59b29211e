"""Wrapping a gRPC method handler's behaviours in a check that runs before the servicer, for grpc.aio server
interceptors (which see only the method's name, so anything about the caller or the request is checked when the
call runs)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

__all__ = ["KINDS", "Check", "guarded", "rewrap"]

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")

# (request, context) -> the request to hand on; it aborts the call (context.abort*) to refuse it.
Check = Callable[[Any, Any], Awaitable[Any]]


def guarded(behavior: Callable[..., Any], check: Check) -> Callable[..., Any]:
    """`behavior` (plain, coroutine or async generator) with `check` run on its request first."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            request = await check(request, context)
            async for item in behavior(request, context):
                yield item

        return stream

    async def call(request: Any, context: Any) -> Any:
        request = await check(request, context)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


def rewrap(handler: grpc.RpcMethodHandler, check_for: Callable[[str], Check], **fields: Any) -> Any:
    """The handler with each behaviour it has guarded by `check_for(kind)`, and `fields` replaced."""
    for kind in KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            fields[kind] = guarded(behavior, check_for(kind))
    return handler._replace(**fields)
