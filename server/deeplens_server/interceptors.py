"""The server interceptor: admits every RPC (``access.py``), runs it, maps any error to a status, audits.

Handlers see only the resulting ``Principal`` (``tenancy``); nothing in a request can choose it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from deeplens_server import metrics, status
from deeplens_server.access import AccessControl
from deeplens_server.errors import DeepLensError
from deeplens_server.policy import MethodPolicy
from deeplens_server.tenancy import Principal, set_principal

# Infrastructure services answer without credentials.
_EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.")

Context = grpc.aio.ServicerContext[Any, Any]


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "OK"
    if isinstance(exc, DeepLensError):
        return status.grpc_code(exc).name
    return "INTERNAL"


class _Call:
    """One RPC's admission and audit, shared by the unary and streaming wrappers."""

    def __init__(self, access: AccessControl, method: str, metadata: Any) -> None:
        self.access = access
        self.method = method
        self.metadata = metadata
        self.principal: Principal | None = None
        self.policy: MethodPolicy | None = None
        self.start = time.perf_counter()

    async def admit(self) -> None:
        self.policy = self.access.policy(self.method)
        self.principal, rps = await self.access.authenticate(self.metadata)
        # Each RPC runs in its own task, so the principal set here is visible to that RPC alone.
        set_principal(self.principal)
        await self.access.authorize(self.principal, self.policy, rps)

    async def finish(self, request: Any, exc: BaseException | None) -> None:
        metrics.RPCS.labels(self.method, _outcome(exc)).inc()
        metrics.RPC_SECONDS.labels(self.method).observe(time.perf_counter() - self.start)
        if self.principal is not None and self.policy is not None and self.policy.mutating:
            await self.access.audit(self.principal, self.method, request, _outcome(exc))


class RequestContextInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, access: AccessControl) -> None:
        self._access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_EXEMPT_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        # In grpc.aio the behaviours are coroutine functions / async generators; the stubs describe sync ones.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(cast(Any, handler.unary_unary), method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(cast(Any, handler.unary_stream), method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(cast(Any, handler.stream_unary), method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(cast(Any, handler.stream_stream), method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise AssertionError(f"unknown handler kind for {method}")  # every gRPC handler is one of the four

    def _wrap_unary(
        self, behavior: Callable[[Any, Context], Awaitable[Any]], method: str, metadata: Any
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        # ``request`` is the message, or the request iterator of a client-streaming call.
        async def wrapped(request: Any, context: Context) -> Any:
            call = _Call(self._access, method, metadata)
            failure: BaseException | None = None
            try:
                await call.admit()
                return await behavior(request, context)
            except Exception as exc:
                failure = exc
                await status.abort(context, exc)
            finally:
                await call.finish(request, failure)

        return wrapped

    def _wrap_stream(
        self, behavior: Callable[[Any, Context], AsyncIterator[Any]], method: str, metadata: Any
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(self._access, method, metadata)
            failure: BaseException | None = None
            try:
                await call.admit()
                async for item in behavior(request, context):
                    yield item
            except Exception as exc:
                failure = exc
                await status.abort(context, exc)
            finally:
                await call.finish(request, failure)

        return wrapped
