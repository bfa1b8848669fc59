"""Listing a storage location for a scan operation: compare with what the last scan saw, remove the images
of objects that disappeared, and append one item per new or changed object to the operation."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from deeplens_server import locations, operations
from deeplens_server.admin_repository import SeenObject
from deeplens_server.backend import Backend
from deeplens_server.operation_store import OperationRecord
from deeplens_server.storage import ListedObject, list_images, validate


def image_id_for(location_id: str, path: str) -> str:
    """Stable per object, so a changed file re-indexes the same image."""
    return "s" + hashlib.sha256(f"{location_id}/{path}".encode()).hexdigest()[:31]


def _changed(before: SeenObject, now: ListedObject) -> bool:
    return (before.size_bytes, before.etag, before.last_modified) != (now.size_bytes, now.etag, now.last_modified)


async def scan_location(backend: Backend, tenant_id: str, operation_id: str, trace: dict[str, str]) -> OperationRecord:
    record = await backend.ops.get(tenant_id, operation_id)
    if record.end_time is not None or not record.payload.get("listing"):
        return record
    payload = record.payload
    location_id, prefix, collection_id = payload["location"], payload.get("prefix", ""), payload["collection_id"]
    record = await backend.ops.mark_running(tenant_id, operation_id, "list")
    await backend.events.announce(record)
    location = await backend.locations.get(tenant_id, location_id)
    spec = validate(locations.spec_of(backend, location), backend.storage_policy)
    listed = await asyncio.to_thread(list_images, spec, prefix)
    seen = await backend.objects.seen(tenant_id, location_id, prefix)

    fresh, changed, unchanged = [], [], 0
    for obj in listed:
        before = seen.pop(obj.path, None)
        if before is None:
            fresh.append(obj)
        elif _changed(before, obj):
            changed.append(obj)
        else:
            unchanged += 1
    gone = list(seen.values())
    if gone:
        await backend.objects.forget(tenant_id, location_id, gone)
        await backend.vectors.delete_images(tenant_id, [(o.collection_id, o.image_id) for o in gone])

    to_index = fresh + changed
    sources: list[dict[str, Any]] = [
        {
            "location": location_id,
            "path": obj.path,
            "size_bytes": obj.size_bytes,
            "collection_id": collection_id,
            "image_id": image_id_for(location_id, obj.path),
            "tags": [f"location:{location_id}"],
        }
        for obj in to_index
    ]
    await backend.objects.record(
        tenant_id,
        location_id,
        [
            SeenObject(o.path, o.size_bytes, o.etag, o.last_modified, collection_id, image_id_for(location_id, o.path))
            for o in to_index
        ],
    )
    counts = {"listed": len(listed), "added": len(fresh), "changed": len(changed), "unchanged": unchanged,
              "deleted": len(gone)}  # fmt: skip
    record, numbers = await backend.ops.add_items(
        tenant_id, operation_id, sources, payload={"counts": counts}, outcome=operations.scan_outcome
    )
    await backend.queue.enqueue_items(tenant_id, operation_id, numbers, record.generation, trace)
    await backend.events.publish(tenant_id, operation_id, state=record.state, stage="index")
    return record
