"""The standard ``google.longrunning.Operations`` service, scoped to the caller's tenant."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from deeplens.v1 import resources_pb2
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import empty_pb2

from deeplens_server import operations, paging, reindex
from deeplens_server.backend import Backend
from deeplens_server.errors import InvalidArgument
from deeplens_server.names import parse_operation, parse_tenant
from deeplens_server.operation_views import describe
from deeplens_server.tenancy import require_reader_of, require_tenant
from deeplens_server.watch import watch_operation

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_WAIT_SECONDS = 60.0


def parse_state_filter(text: str) -> list[int]:
    """AIP-160 subset: ``state = RUNNING``, ``state = PENDING OR state = RUNNING``, ``done = true|false``."""
    text = text.strip()
    if not text:
        return []
    states: list[int] = []
    for clause in text.split(" OR "):
        field, _, value = (part.strip() for part in clause.partition("="))
        if field == "done" and value in ("true", "false"):
            states += (
                [operations.SUCCEEDED, operations.FAILED, operations.CANCELLED]
                if value == "true"
                else [operations.PENDING, operations.RUNNING]
            )
            continue
        name = value.upper()
        name = name if name.startswith("OPERATION_STATE_") else f"OPERATION_STATE_{name}"
        known = set(resources_pb2.OperationState.keys())
        if field != "state" or name not in known or name.endswith("UNSPECIFIED"):
            raise InvalidArgument(
                "filter supports `state = <STATE>` joined by OR, or `done = true|false`",
                field="filter",
                reason="INVALID_FILTER",
            )
        states.append(resources_pb2.OperationState.Value(name))
    return states


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        name = parse_operation(request.name)
        tenant = require_reader_of(name.tenant)
        return await describe(self._backend, await self._backend.ops.get(tenant, name.operation))

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Context
    ) -> operations_pb2.ListOperationsResponse:
        tenant = require_tenant(parse_tenant(request.name, "name").tenant)
        size = paging.page_size(request.page_size)
        records = await self._backend.ops.list_recent(
            tenant,
            states=parse_state_filter(request.filter),
            after=paging.decode(request.page_token),
            limit=size + 1,
        )
        page, token = paging.split_page(records, size, key=lambda r: r.id)
        return operations_pb2.ListOperationsResponse(
            operations=[await describe(self._backend, r) for r in page], next_page_token=token
        )

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        name = parse_operation(request.name)
        tenant = require_tenant(name.tenant)
        kind = (await self._backend.ops.get(tenant, name.operation)).kind
        record = await self._backend.ops.cancel(tenant, name.operation, operations.outcome_of(kind))
        await self._backend.events.announce(record)
        if kind == operations.KIND_REINDEX and record.end_time is not None:
            await reindex.retire(self._backend, tenant, record)
        return empty_pb2.Empty()

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        name = parse_operation(request.name)
        await self._backend.ops.delete(require_tenant(name.tenant), name.operation)
        return empty_pb2.Empty()

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        """Returns when the operation is done or the wait (``timeout``, default 60 s, and the deadline) ends."""
        name = parse_operation(request.name)
        tenant = require_reader_of(name.tenant)
        limit = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else DEFAULT_WAIT_SECONDS
        remaining = context.time_remaining()
        if remaining is not None:
            limit = min(limit, max(remaining - 0.5, 0.0))
        latest = await self._backend.ops.get(tenant, name.operation)

        async def follow() -> None:
            nonlocal latest
            async for record in watch_operation(self._backend, tenant, name.operation):
                latest = record

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follow(), timeout=limit)
        return await describe(self._backend, latest)
