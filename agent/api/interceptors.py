"""Wrapping a gRPC method handler's behaviours in a check that runs before the servicer, for grpc.aio server
interceptors (which see only the method's name, so anything about the caller or the request is checked when the
call runs)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

__all__ = ["KINDS", "Check", "HandlerWrapper", "guarded", "rewrap"]

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


class HandlerWrapper(aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no stubs
    """An interceptor that hands each method's handler, with the method's full name, to `wrap`; the wrapped handler
    is kept per method and made again only if the method's handler changes (wrapping on every call cost each RPC
    about a tenth of its time in the agent)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The method's handler as `wrap` makes it (None, for an unknown method, stays None)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = str(handler_call_details.method)
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self.wrap(handler, method))
        return known[1]

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler to run for `method` instead of `handler`."""
        raise NotImplementedError
