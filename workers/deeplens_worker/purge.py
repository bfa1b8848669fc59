"""Deleting a tenant: count what it holds; unless a dry run, close it to every key, then remove its vectors,
rows and (if asked) stored originals. Re-running after a crash finishes the job; nothing is removed twice."""

from __future__ import annotations

from deeplens.v1 import admin_service_pb2
from deeplens_server import operations
from deeplens_server.backend import Backend
from deeplens_server.operation_store import OperationRecord


async def purge_tenant(backend: Backend, tenant_id: str, operation_id: str) -> OperationRecord:
    record = await backend.ops.get(tenant_id, operation_id)
    if record.end_time is not None:
        return record
    dry_run = bool(record.payload.get("dry_run", True))
    delete_originals = bool(record.payload.get("delete_originals", False))

    await backend.events.announce(await backend.ops.mark_running(tenant_id, operation_id, "count"))
    counts = await backend.admin.purge_counts(tenant_id, operation_id)
    vectors = await backend.vector_count(tenant_id, await backend.model_for(tenant_id))
    files, size = await backend.blobs.usage(tenant_id)
    response = admin_service_pb2.PurgeTenantResponse(
        dry_run=dry_run,
        images=counts["images"],
        vectors=vectors,
        operations=counts["operations"],
        api_keys=counts["api_keys"],
        original_files=files if delete_originals else 0,
        original_bytes=size if delete_originals else 0,
    )
    if not dry_run:
        await backend.events.announce(await backend.ops.mark_running(tenant_id, operation_id, "purge"))
        await backend.admin.mark_tenant_deleted(tenant_id)  # first: no key works from here on
        await backend.vectors.delete(tenant_id)
        await backend.admin.purge_tenant_rows(tenant_id, operation_id)
        await backend.blobs.delete_thumbnails(tenant_id)
        if delete_originals:
            await backend.blobs.delete_originals(tenant_id)
    packed = operations.pack(response)
    record, _ = await backend.ops.finish_item(
        tenant_id,
        operation_id,
        0,
        state=operations.ITEM_SUCCEEDED,
        outcome=lambda final, _error: (operations.SUCCEEDED, packed, None),
    )
    await backend.events.announce(record)
    return record
