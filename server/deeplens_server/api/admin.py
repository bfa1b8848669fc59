from __future__ import annotations

from typing import Any

import grpc
from deeplens.v1 import admin_service_pb2, admin_service_pb2_grpc

from deeplens_server.api.convert import tenant_to_proto
from deeplens_server.backend import Backend
from deeplens_server.names import check_tenant_id, parse_tenant
from deeplens_server.tenancy import require_tenant

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def CreateTenant(
        self, request: admin_service_pb2.CreateTenantRequest, context: Context
    ) -> admin_service_pb2.CreateTenantResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        # Until platform administrators exist, a caller may create only the tenant it identifies as.
        require_tenant(tenant_id)
        record = await self._backend.repo.create_tenant(tenant_id, request.tenant.display_name)
        return admin_service_pb2.CreateTenantResponse(tenant=tenant_to_proto(record))

    async def GetTenant(
        self, request: admin_service_pb2.GetTenantRequest, context: Context
    ) -> admin_service_pb2.GetTenantResponse:
        tenant = require_tenant(parse_tenant(request.name).tenant)
        record = await self._backend.repo.get_tenant(tenant)
        return admin_service_pb2.GetTenantResponse(tenant=tenant_to_proto(record))
