from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import grpc
from deeplens.v1 import admin_service_pb2, admin_service_pb2_grpc, resources_pb2
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import duration_pb2
from opentelemetry import propagate

from deeplens_server import insight, locations, operations, paging, reindex
from deeplens_server.admin_repository import LIMIT_FIELDS
from deeplens_server.api.convert import (
    api_key_to_proto,
    audit_to_proto,
    collection_to_proto,
    limits_from_proto,
    policy_overrides,
    tenant_to_proto,
)
from deeplens_server.auth import Role, mint_key
from deeplens_server.backend import Backend
from deeplens_server.duplicates import DEFAULT_POLICY
from deeplens_server.errors import FailedPrecondition, InvalidArgument
from deeplens_server.model_pointer import split_model_id
from deeplens_server.names import (
    check_collection_id,
    check_tenant_id,
    parse_api_key,
    parse_collection,
    parse_storage_location,
    parse_tenant,
)
from deeplens_server.operation_views import describe
from deeplens_server.status import to_rpc_status
from deeplens_server.tenancy import require_admin_of, require_reader_of, require_tenant

Context = grpc.aio.ServicerContext[Any, Any]
MAX_DISPLAY_NAME = 200
_TENANT_ROLES = {int(r) for r in (Role.VIEWER, Role.UPLOADER, Role.EDITOR, Role.TENANT_ADMIN)}


def _display_name(value: str, field: str) -> str:
    if len(value) > MAX_DISPLAY_NAME or not value.isprintable():
        raise InvalidArgument(
            f"display_name must be at most {MAX_DISPLAY_NAME} printable characters",
            field=field,
            reason="INVALID_DISPLAY_NAME",
        )
    return value


def _tenant_changes(request: admin_service_pb2.UpdateTenantRequest) -> dict[str, Any]:
    paths = list(request.update_mask.paths) or ["display_name", "limits"]
    changes: dict[str, Any] = {}
    limits = limits_from_proto(request.tenant.limits)
    for path in paths:
        if path == "display_name":
            changes["display_name"] = _display_name(request.tenant.display_name, "tenant.display_name")
        elif path == "limits":
            changes.update({f: getattr(limits, f) for f in LIMIT_FIELDS})
        elif path == "duplicate_policy":
            overrides = {k: v for k, v in policy_overrides(request.tenant.duplicate_policy).items() if v}
            DEFAULT_POLICY.override(overrides)  # checks the values
            changes["duplicate_policy"] = overrides
        elif path.startswith("limits.") and path.removeprefix("limits.") in LIMIT_FIELDS:
            changes[path.removeprefix("limits.")] = getattr(limits, path.removeprefix("limits."))
        else:
            raise InvalidArgument(f"cannot update {path!r}", field="update_mask", reason="INVALID_UPDATE_MASK")
    if any(v < 0 for k, v in changes.items() if k in LIMIT_FIELDS):
        raise InvalidArgument("limits must not be negative", field="tenant.limits", reason="INVALID_LIMIT")
    return changes


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    # Tenants (platform administrators, by policy)

    async def CreateTenant(
        self, request: admin_service_pb2.CreateTenantRequest, context: Context
    ) -> admin_service_pb2.CreateTenantResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        limits = limits_from_proto(request.tenant.limits)
        if any(getattr(limits, f) < 0 for f in LIMIT_FIELDS):
            raise InvalidArgument("limits must not be negative", field="tenant.limits", reason="INVALID_LIMIT")
        display_name = _display_name(request.tenant.display_name, "tenant.display_name")
        record = await self._backend.admin.create_tenant(
            tenant_id, display_name, limits, embedding_model=self._backend.embedder.model_id
        )
        return admin_service_pb2.CreateTenantResponse(tenant=tenant_to_proto(record))

    async def GetTenant(
        self, request: admin_service_pb2.GetTenantRequest, context: Context
    ) -> admin_service_pb2.GetTenantResponse:
        tenant = require_reader_of(parse_tenant(request.name).tenant)
        return admin_service_pb2.GetTenantResponse(tenant=tenant_to_proto(await self._backend.admin.get_tenant(tenant)))

    async def GetTenantStats(
        self, request: admin_service_pb2.GetTenantStatsRequest, context: Context
    ) -> admin_service_pb2.GetTenantStatsResponse:
        tenant = require_reader_of(parse_tenant(request.name).tenant)
        await self._backend.admin.get_tenant(tenant)  # NOT_FOUND for a tenant that does not exist
        stats = await insight.tenant_stats(self._backend, tenant)
        return admin_service_pb2.GetTenantStatsResponse(
            name=f"tenants/{tenant}",
            images=stats.images,
            bytes=stats.bytes,
            duplicate_images=stats.duplicate_images,
            duplicate_groups=stats.duplicate_groups,
            reclaimable_bytes=stats.reclaimable_bytes,
            vectors=stats.vectors,
            operations_by_state={
                resources_pb2.OperationState.Name(state): n  # type: ignore[arg-type]
                for state, n in stats.operations_by_state.items()
            },
            pending_items=stats.pending_items,
            queue_depth=stats.queue_depth,
            embedding_model=stats.embedding_model,
            reindex_model=stats.reindex_model or "",
        )

    async def GetSystemHealth(
        self, request: admin_service_pb2.GetSystemHealthRequest, context: Context
    ) -> admin_service_pb2.GetSystemHealthResponse:
        found = await insight.system_health(self._backend)
        return admin_service_pb2.GetSystemHealthResponse(
            healthy=all(h.healthy for h in found),
            dependencies=[
                admin_service_pb2.DependencyHealth(
                    name=h.name, healthy=h.healthy, latency=duration_pb2.Duration(nanos=int(h.seconds * 1e9)),
                    message=h.message,
                )
                for h in found
            ],
        )  # fmt: skip

    async def ListModels(
        self, request: admin_service_pb2.ListModelsRequest, context: Context
    ) -> admin_service_pb2.ListModelsResponse:
        return admin_service_pb2.ListModelsResponse(
            models=[
                admin_service_pb2.Model(
                    name=m.name, ready=m.ready, active=m.active, collection=m.collection, tenants=m.tenants
                )
                for m in await insight.models(self._backend)
            ]
        )

    async def ReindexTenant(
        self, request: admin_service_pb2.ReindexTenantRequest, context: Context
    ) -> operations_pb2.Operation:
        tenant = require_admin_of(parse_tenant(request.name).tenant)
        await self._backend.admin.get_tenant(tenant)  # NOT_FOUND for a tenant that does not exist
        record = await reindex.start(self._backend, tenant, request.model)
        return await describe(self._backend, record)

    async def BatchReindexTenants(
        self, request: admin_service_pb2.BatchReindexTenantsRequest, context: Context
    ) -> admin_service_pb2.BatchReindexTenantsResponse:
        split_model_id(request.model)
        named = [parse_tenant(n, "names").tenant for n in request.names]
        for tenant in named:
            await self._backend.admin.get_tenant(tenant)  # NOT_FOUND before anything starts
        response = admin_service_pb2.BatchReindexTenantsResponse()
        for tenant in named or await self._live_tenants():
            try:
                record = await reindex.start(self._backend, tenant, request.model)
            except FailedPrecondition as exc:
                if exc.reason not in ("MODEL_ALREADY_ACTIVE", "REINDEX_RUNNING"):
                    raise
                response.skipped.append(f"tenants/{tenant}")
                continue
            response.operations.append(await describe(self._backend, record))
        return response

    async def _live_tenants(self) -> list[str]:
        found: list[str] = []
        while page := await self._backend.admin.list_tenants(
            after=found[-1] if found else None, limit=500, show_deleted=False
        ):
            found += [t.id for t in page]
        return found

    async def ListTenants(
        self, request: admin_service_pb2.ListTenantsRequest, context: Context
    ) -> admin_service_pb2.ListTenantsResponse:
        size = paging.page_size(request.page_size)
        records = await self._backend.admin.list_tenants(
            after=paging.decode(request.page_token), limit=size + 1, show_deleted=request.show_deleted
        )
        page, token = paging.split_page(records, size, key=lambda r: r.id)
        return admin_service_pb2.ListTenantsResponse(tenants=[tenant_to_proto(r) for r in page], next_page_token=token)

    async def UpdateTenant(
        self, request: admin_service_pb2.UpdateTenantRequest, context: Context
    ) -> admin_service_pb2.UpdateTenantResponse:
        tenant = parse_tenant(request.tenant.name, "tenant.name").tenant
        record = await self._backend.admin.update_tenant(tenant, _tenant_changes(request), etag=request.tenant.etag)
        return admin_service_pb2.UpdateTenantResponse(tenant=tenant_to_proto(record))

    async def DeleteTenant(
        self, request: admin_service_pb2.DeleteTenantRequest, context: Context
    ) -> operations_pb2.Operation:
        tenant = parse_tenant(request.name).tenant
        await self._backend.admin.get_tenant(tenant)
        record, _ = await self._backend.ops.create(
            tenant,
            uuid.uuid4().hex,
            kind=operations.KIND_PURGE_TENANT,
            items=[(operations.ITEM_PENDING, {"tenant": tenant}, None)],
            payload={"dry_run": not request.force, "delete_originals": request.delete_originals},
        )
        await self._backend.events.announce(record)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        await self._backend.queue.enqueue_operation(record.kind, tenant, record.id, carrier)
        return await describe(self._backend, record)

    # Collections

    async def CreateCollection(
        self, request: admin_service_pb2.CreateCollectionRequest, context: Context
    ) -> admin_service_pb2.CreateCollectionResponse:
        tenant = require_tenant(parse_tenant(request.parent, "parent").tenant)
        collection_id = check_collection_id(request.collection_id)
        display_name = _display_name(request.collection.display_name, "collection.display_name")
        record = await self._backend.admin.create_collection(tenant, collection_id, display_name)
        return admin_service_pb2.CreateCollectionResponse(collection=collection_to_proto(record))

    async def GetCollection(
        self, request: admin_service_pb2.GetCollectionRequest, context: Context
    ) -> admin_service_pb2.GetCollectionResponse:
        name = parse_collection(request.name, "name")
        tenant = require_tenant(name.tenant)
        record = await self._backend.admin.get_collection(tenant, name.collection)
        return admin_service_pb2.GetCollectionResponse(collection=collection_to_proto(record))

    async def ListCollections(
        self, request: admin_service_pb2.ListCollectionsRequest, context: Context
    ) -> admin_service_pb2.ListCollectionsResponse:
        tenant = require_tenant(parse_tenant(request.parent, "parent").tenant)
        size = paging.page_size(request.page_size)
        records = await self._backend.admin.list_collections(
            tenant, after=paging.decode(request.page_token), limit=size + 1
        )
        page, token = paging.split_page(records, size, key=lambda r: r.id)
        return admin_service_pb2.ListCollectionsResponse(
            collections=[collection_to_proto(r) for r in page], next_page_token=token
        )

    async def DeleteCollection(
        self, request: admin_service_pb2.DeleteCollectionRequest, context: Context
    ) -> admin_service_pb2.DeleteCollectionResponse:
        name = parse_collection(request.name, "name")
        tenant = require_tenant(name.tenant)
        # Rows first: a vector without its row is never shown, so a failure in between hides nothing wrongly.
        deleted = await self._backend.admin.delete_collection(tenant, name.collection, force=request.force)
        if deleted:
            await self._backend.vectors.delete(tenant, collection_id=name.collection)
        return admin_service_pb2.DeleteCollectionResponse(deleted_images=deleted)

    # API keys

    async def CreateApiKey(
        self, request: admin_service_pb2.CreateApiKeyRequest, context: Context
    ) -> admin_service_pb2.CreateApiKeyResponse:
        tenant = require_admin_of(parse_tenant(request.parent, "parent").tenant)
        if int(request.api_key.role) not in _TENANT_ROLES:
            raise InvalidArgument(
                "role must be viewer, uploader, editor or tenant admin", field="api_key.role", reason="INVALID_ROLE"
            )
        tenant_record = await self._backend.admin.get_tenant(tenant)
        if tenant_record.delete_time is not None:
            raise InvalidArgument("the tenant is deleted", field="parent", reason="TENANT_DELETED")
        key = mint_key()
        record = await self._backend.admin.create_api_key(
            tenant,
            key.key_id,
            request.api_key.role,
            _display_name(request.api_key.display_name, "api_key.display_name"),
            key.digest,
        )
        return admin_service_pb2.CreateApiKeyResponse(api_key=api_key_to_proto(record), secret=key.token)

    async def ListApiKeys(
        self, request: admin_service_pb2.ListApiKeysRequest, context: Context
    ) -> admin_service_pb2.ListApiKeysResponse:
        tenant = require_admin_of(parse_tenant(request.parent, "parent").tenant)
        size = paging.page_size(request.page_size)
        records = await self._backend.admin.list_api_keys(
            tenant, after=paging.decode(request.page_token), limit=size + 1
        )
        page, token = paging.split_page(records, size, key=lambda r: r.id)
        return admin_service_pb2.ListApiKeysResponse(
            api_keys=[api_key_to_proto(r) for r in page], next_page_token=token
        )

    async def RevokeApiKey(
        self, request: admin_service_pb2.RevokeApiKeyRequest, context: Context
    ) -> admin_service_pb2.RevokeApiKeyResponse:
        name = parse_api_key(request.name)
        tenant = require_admin_of(name.tenant)
        record = await self._backend.admin.revoke_api_key(tenant, name.key_id)
        return admin_service_pb2.RevokeApiKeyResponse(api_key=api_key_to_proto(record))

    # Storage locations

    async def CreateStorageLocation(
        self, request: admin_service_pb2.CreateStorageLocationRequest, context: Context
    ) -> admin_service_pb2.CreateStorageLocationResponse:
        tenant = require_admin_of(parse_tenant(request.parent, "parent").tenant)
        location_id = check_collection_id(request.storage_location_id, "storage_location_id")
        _display_name(request.storage_location.display_name, "storage_location.display_name")
        record = await locations.create(self._backend, tenant, location_id, request.storage_location)
        return admin_service_pb2.CreateStorageLocationResponse(storage_location=locations.to_proto(record))

    async def GetStorageLocation(
        self, request: admin_service_pb2.GetStorageLocationRequest, context: Context
    ) -> admin_service_pb2.GetStorageLocationResponse:
        name = parse_storage_location(request.name)
        record = await self._backend.locations.get(require_admin_of(name.tenant), name.location)
        return admin_service_pb2.GetStorageLocationResponse(storage_location=locations.to_proto(record))

    async def ListStorageLocations(
        self, request: admin_service_pb2.ListStorageLocationsRequest, context: Context
    ) -> admin_service_pb2.ListStorageLocationsResponse:
        tenant = require_admin_of(parse_tenant(request.parent, "parent").tenant)
        size = paging.page_size(request.page_size)
        records = await self._backend.locations.list(tenant, after=paging.decode(request.page_token), limit=size + 1)
        page, token = paging.split_page(records, size, key=lambda r: r.id)
        return admin_service_pb2.ListStorageLocationsResponse(
            storage_locations=[locations.to_proto(r) for r in page], next_page_token=token
        )

    async def UpdateStorageLocation(
        self, request: admin_service_pb2.UpdateStorageLocationRequest, context: Context
    ) -> admin_service_pb2.UpdateStorageLocationResponse:
        name = parse_storage_location(request.storage_location.name, "storage_location.name")
        tenant = require_admin_of(name.tenant)
        _display_name(request.storage_location.display_name, "storage_location.display_name")
        record = await locations.update(
            self._backend, tenant, name.location, request.storage_location, list(request.update_mask.paths)
        )
        return admin_service_pb2.UpdateStorageLocationResponse(storage_location=locations.to_proto(record))

    async def DeleteStorageLocation(
        self, request: admin_service_pb2.DeleteStorageLocationRequest, context: Context
    ) -> admin_service_pb2.DeleteStorageLocationResponse:
        name = parse_storage_location(request.name)
        await self._backend.locations.delete(require_admin_of(name.tenant), name.location)
        return admin_service_pb2.DeleteStorageLocationResponse()

    async def TestStorageLocation(
        self, request: admin_service_pb2.TestStorageLocationRequest, context: Context
    ) -> admin_service_pb2.TestStorageLocationResponse:
        name = parse_storage_location(request.name)
        result = await locations.test(self._backend, require_admin_of(name.tenant), name.location)
        reply = admin_service_pb2.TestStorageLocationResponse(ok=result.ok, objects_listed=result.objects_listed)
        reply.latency.FromTimedelta(timedelta(seconds=result.latency_seconds))
        if result.error is not None:
            reply.error.CopyFrom(to_rpc_status(result.error))
        return reply

    # Audit log

    async def ListAuditEvents(
        self, request: admin_service_pb2.ListAuditEventsRequest, context: Context
    ) -> admin_service_pb2.ListAuditEventsResponse:
        tenant = require_admin_of(parse_tenant(request.parent, "parent").tenant)
        size = paging.page_size(request.page_size)
        after = paging.decode(request.page_token)
        if after is not None and not after.isdigit():
            raise InvalidArgument("page_token is not valid", field="page_token", reason="INVALID_PAGE_TOKEN")
        records = await self._backend.admin.list_audit(
            tenant, before=int(after) if after is not None else None, limit=size + 1
        )
        page, token = paging.split_page(records, size, key=lambda r: str(r.id))
        return admin_service_pb2.ListAuditEventsResponse(
            audit_events=[audit_to_proto(r) for r in page], next_page_token=token
        )
