"""Accepting ingests: admit the tenant, check and keep each image's bytes, persist the operation with its
items, enqueue one job per item. Never waits for the work."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from deeplens_server import operations
from deeplens_server.admin_repository import Limits
from deeplens_server.backend import Backend
from deeplens_server.config import Settings
from deeplens_server.errors import FailedPrecondition, ImageRejected, InvalidArgument, ResourceExhausted
from deeplens_server.fetch import check_url
from deeplens_server.imaging import ImageLimits, content_sha256, inspect_image
from deeplens_server.names import CollectionName, check_image_id
from deeplens_server.operation_store import OperationRecord
from deeplens_server.status import to_rpc_status

MAX_TAGS = 64
MAX_TAG_LENGTH = 128
MAX_REQUEST_ID_LENGTH = 128
MAX_ITEMS_PER_OPERATION = 100_000
DEFAULT_ID_HEX_DIGITS = 32


@dataclass(frozen=True, slots=True)
class ImageUpload:
    content: bytes
    image_id: str = ""
    tags: tuple[str, ...] = ()


def effective_limits(settings: Settings, own: Limits) -> Limits:
    """A tenant's limits with its zeros replaced by the server's defaults (and never above the server's caps)."""
    image = ImageLimits(settings.max_image_bytes, settings.max_image_pixels).tightened(
        own.max_image_bytes, own.max_image_pixels
    )
    return Limits(
        max_images=own.max_images or settings.default_max_images,
        max_image_bytes=image.max_bytes,
        max_image_pixels=image.max_pixels,
        requests_per_second=own.requests_per_second or settings.default_requests_per_second,
        max_concurrent_operations=own.max_concurrent_operations or settings.default_max_concurrent_operations,
    )


def _check_tags(tags: tuple[str, ...]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} tags", field="tags", reason="TOO_MANY_TAGS")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_LENGTH or not tag.isprintable():
            raise InvalidArgument(
                f"tags must be 1-{MAX_TAG_LENGTH} printable characters", field="tags", reason="INVALID_TAG"
            )
    return sorted(set(tags))


def _check_request_id(request_id: str) -> str | None:
    if len(request_id) > MAX_REQUEST_ID_LENGTH or not request_id.isprintable():
        raise InvalidArgument("request_id is too long", field="request_id", reason="INVALID_REQUEST_ID")
    return request_id or None


async def admit_tenant(backend: Backend, tenant: str) -> tuple[Limits, int, int]:
    """The tenant's effective limits, images held and operations in flight; refuses a deleted tenant or
    one at its limit of concurrent operations."""
    record = await backend.admin.get_tenant(tenant)
    if record.delete_time is not None:
        raise FailedPrecondition("the tenant is deleted", reason="TENANT_DELETED")
    limits = effective_limits(backend.settings, record.limits)
    images, active = await backend.admin.usage(tenant)
    if active >= limits.max_concurrent_operations:
        raise ResourceExhausted(
            f"the tenant already has {active} operations in progress (limit {limits.max_concurrent_operations})",
            reason="TOO_MANY_OPERATIONS",
            quota=f"tenants/{tenant}:max_concurrent_operations",
            retry_after=1.0,
        )
    return limits, images, active


def _check_quota(tenant: str, limits: Limits, held: int, active: int, adding: int) -> None:
    if held + active + adding > limits.max_images:
        raise ResourceExhausted(
            f"the tenant holds {held} images, {active} operations are pending and this adds {adding} "
            f"(limit {limits.max_images})",
            reason="IMAGE_QUOTA_EXCEEDED",
            quota=f"tenants/{tenant}:max_images",
        )


async def stage_image(backend: Backend, parent: CollectionName, upload: ImageUpload, limits: Limits) -> dict[str, Any]:
    """Checks one image's header against the limits and keeps its bytes; returns the item's source."""
    tags = _check_tags(upload.tags)
    header = inspect_image(upload.content, ImageLimits(limits.max_image_bytes, limits.max_image_pixels))
    sha256 = content_sha256(upload.content)
    image_id = check_image_id(upload.image_id) if upload.image_id else sha256[:DEFAULT_ID_HEX_DIGITS]
    storage_uri = await backend.blobs.put(parent.tenant, sha256, upload.content)
    return {
        "collection_id": parent.collection,
        "image_id": image_id,
        "tags": tags,
        "sha256": sha256,
        "storage_uri": storage_uri,
        "size_bytes": len(upload.content),
        "format": header.format,
    }


async def _start(
    backend: Backend,
    parent: CollectionName,
    kind: str,
    items: list[tuple[int, dict[str, Any], bytes | None]],
    request_id: str | None,
    trace_carrier: dict[str, str],
) -> OperationRecord:
    await backend.admin.ensure_collection(parent.tenant, parent.collection)
    record, created = await backend.ops.create(
        parent.tenant, uuid.uuid4().hex, kind=kind, items=items, request_id=request_id
    )
    if record.end_time is None:
        if created:
            await backend.events.announce(record)
        pending = (
            [n for n, (state, _, _) in enumerate(items) if state == operations.ITEM_PENDING]
            if created
            else (await backend.ops.pending_items(parent.tenant, record.id))
        )
        # Enqueueing is idempotent (job ids derive from the operation), so a retried request re-enqueues safely.
        await backend.queue.enqueue_items(parent.tenant, record.id, pending, record.generation, trace_carrier)
    return record


async def submit_ingest(
    backend: Backend, parent: CollectionName, upload: ImageUpload, request_id: str, trace_carrier: dict[str, str]
) -> OperationRecord:
    """One image: refused outright (INVALID_ARGUMENT) if its header is bad, else a one-item operation."""
    key = _check_request_id(request_id)
    limits, held, active = await admit_tenant(backend, parent.tenant)
    source = await stage_image(backend, parent, upload, limits)
    _check_quota(parent.tenant, limits, held, active, 1)
    return await _start(
        backend, parent, operations.KIND_INGEST_IMAGE, [(operations.ITEM_PENDING, source, None)], key, trace_carrier
    )


async def submit_url(
    backend: Backend,
    parent: CollectionName,
    url: str,
    upload: ImageUpload,
    request_id: str,
    trace_carrier: dict[str, str],
) -> OperationRecord:
    """One image by URL: the URL is checked now, fetched (and judged) by a worker."""
    key = _check_request_id(request_id)
    check_url(url, backend.storage_policy)
    tags = _check_tags(upload.tags)
    digest = hashlib.sha256(url.encode()).hexdigest()
    image_id = check_image_id(upload.image_id) if upload.image_id else "u" + digest[: DEFAULT_ID_HEX_DIGITS - 1]
    limits, held, active = await admit_tenant(backend, parent.tenant)
    _check_quota(parent.tenant, limits, held, active, 1)
    source = {"url": url, "collection_id": parent.collection, "image_id": image_id, "tags": tags}
    return await _start(
        backend, parent, operations.KIND_INGEST_IMAGE, [(operations.ITEM_PENDING, source, None)], key, trace_carrier
    )


async def submit_upload(
    backend: Backend,
    parent: CollectionName,
    uploads: AsyncIterator[ImageUpload],
    request_id: str,
    trace_carrier: dict[str, str],
) -> OperationRecord:
    """Many images as one operation. An image refused at the door becomes a failed item; the rest go on."""
    key = _check_request_id(request_id)
    limits, held, active = await admit_tenant(backend, parent.tenant)
    items: list[tuple[int, dict[str, Any], bytes | None]] = []
    async for upload in uploads:
        if len(items) >= MAX_ITEMS_PER_OPERATION:
            raise InvalidArgument(
                f"at most {MAX_ITEMS_PER_OPERATION} images per upload", field="chunk.item", reason="TOO_MANY_ITEMS"
            )
        try:
            items.append((operations.ITEM_PENDING, await stage_image(backend, parent, upload, limits), None))
        except (ImageRejected, InvalidArgument) as exc:
            refused = {"image_id": upload.image_id, "collection_id": parent.collection}
            items.append((operations.ITEM_FAILED, refused, to_rpc_status(exc).SerializeToString()))
    if not items:
        raise InvalidArgument("the upload holds no image", field="chunk", reason="EMPTY_UPLOAD")
    _check_quota(parent.tenant, limits, held, active, sum(1 for s, _, _ in items if s == operations.ITEM_PENDING))
    return await _start(backend, parent, operations.KIND_INGEST_BATCH, items, key, trace_carrier)
