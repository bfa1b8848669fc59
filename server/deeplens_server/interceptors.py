"""Server interceptor: establishes who is calling and maps every error raised by a handler to a status.

Authentication is a seam for now: the tenant is read from the ``x-deeplens-tenant`` metadata entry. Handlers
only ever see the resulting ``Principal`` (``tenancy.current_principal``), so real API-key authentication
replaces ``principal_from_metadata`` without touching them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import grpc

from deeplens_server import status
from deeplens_server.errors import DeepLensError, Unauthenticated
from deeplens_server.names import check_tenant_id
from deeplens_server.tenancy import Principal, set_principal

TENANT_METADATA_KEY = "x-deeplens-tenant"
# Infrastructure services answer without a principal and without error mapping.
_EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.")

Context = grpc.aio.ServicerContext[Any, Any]


def principal_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal | None:
    for key, value in metadata or ():
        if key == TENANT_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            try:
                return Principal(tenant=check_tenant_id(text, TENANT_METADATA_KEY))
            except DeepLensError as exc:
                raise Unauthenticated("the tenant identity is malformed", reason="INVALID_CREDENTIALS") from exc
    return None


class RequestContextInterceptor(grpc.aio.ServerInterceptor):
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
                _wrap_unary(cast(Any, handler.unary_unary), metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(cast(Any, handler.unary_stream), metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(
    behavior: Callable[[Any, Context], Awaitable[Any]], metadata: Any
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def wrapped(request: Any, context: Context) -> Any:
        try:
            # Each RPC runs in its own task, so the principal set here is visible to that RPC alone.
            set_principal(principal_from_metadata(metadata))
            return await behavior(request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await status.abort(context, exc)

    return wrapped


def _wrap_stream(
    behavior: Callable[[Any, Context], AsyncIterator[Any]], metadata: Any
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            set_principal(principal_from_metadata(metadata))
            async for item in behavior(request, context):
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await status.abort(context, exc)

    return wrapped
