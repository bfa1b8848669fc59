from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from deeplens.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from google.longrunning import operations_proto_pb2 as operations_pb2
from opentelemetry import propagate

from deeplens_server import operations
from deeplens_server.backend import Backend
from deeplens_server.ingest import IngestRequest, submit_ingest
from deeplens_server.names import parse_collection, parse_operation
from deeplens_server.tenancy import require_reader_of, require_tenant
from deeplens_server.watch import watch_operation

Context = grpc.aio.ServicerContext[Any, Any]


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def IngestImage(
        self, request: ingest_service_pb2.IngestImageRequest, context: Context
    ) -> operations_pb2.Operation:
        parent = parse_collection(request.parent)
        require_tenant(parent.tenant)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        record = await submit_ingest(
            self._backend,
            IngestRequest(
                parent=parent,
                content=request.content,
                image_id=request.image_id,
                tags=list(request.tags),
                request_id=request.request_id,
            ),
            carrier,
        )
        return operations.to_proto(record)

    async def WatchOperation(
        self, request: ingest_service_pb2.WatchOperationRequest, context: Context
    ) -> AsyncIterator[ingest_service_pb2.WatchOperationResponse]:
        name = parse_operation(request.name)
        tenant = require_reader_of(name.tenant)
        async for record in watch_operation(self._backend, tenant, name.operation):
            yield ingest_service_pb2.WatchOperationResponse(operation=operations.to_proto(record))
