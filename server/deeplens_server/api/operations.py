"""The standard ``google.longrunning.Operations`` service, scoped to the caller's tenant."""

from __future__ import annotations

from typing import Any

import grpc
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as operations_pb2

from deeplens_server import operations
from deeplens_server.backend import Backend
from deeplens_server.names import parse_operation
from deeplens_server.tenancy import require_reader_of

Context = grpc.aio.ServicerContext[Any, Any]


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        name = parse_operation(request.name)
        tenant = require_reader_of(name.tenant)
        return operations.to_proto(await self._backend.repo.get_operation(tenant, name.operation))
