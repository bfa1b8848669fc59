"""Accepting an ingest: validate, keep the bytes, persist the operation, enqueue. Never waits for the work."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from deeplens_server import operations
from deeplens_server.admin_repository import Limits
from deeplens_server.backend import Backend
from deeplens_server.config import Settings
from deeplens_server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from deeplens_server.imaging import ImageLimits, content_sha256, inspect_image
from deeplens_server.names import CollectionName, check_image_id
from deeplens_server.repository import OperationRecord

MAX_TAGS = 64
MAX_TAG_LENGTH = 128
MAX_REQUEST_ID_LENGTH = 128
DEFAULT_ID_HEX_DIGITS = 32


@dataclass(frozen=True, slots=True)
class IngestRequest:
    parent: CollectionName
    content: bytes
    image_id: str
    tags: list[str]
    request_id: str


def effective_limits(settings: Settings, own: Limits) -> Limits:
    """A tenant's limits with its zeros replaced by the server's defaults (and never above the server's caps)."""
    return Limits(
        max_images=own.max_images or settings.default_max_images,
        max_image_bytes=min(own.max_image_bytes or settings.max_image_bytes, settings.max_image_bytes),
        max_image_pixels=min(own.max_image_pixels or settings.max_image_pixels, settings.max_image_pixels),
        requests_per_second=own.requests_per_second or settings.default_requests_per_second,
        max_concurrent_operations=own.max_concurrent_operations or settings.default_max_concurrent_operations,
    )


def _check_tags(tags: list[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} tags", field="tags", reason="TOO_MANY_TAGS")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_LENGTH or not tag.isprintable():
            raise InvalidArgument(
                f"tags must be 1-{MAX_TAG_LENGTH} printable characters", field="tags", reason="INVALID_TAG"
            )
    return sorted(set(tags))


async def submit_ingest(backend: Backend, request: IngestRequest, trace_carrier: dict[str, str]) -> OperationRecord:
    """Creates (or, for a repeated ``request_id``, returns) the ingest operation for one image."""
    tenant = request.parent.tenant
    if len(request.request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument("request_id is too long", field="request_id", reason="INVALID_REQUEST_ID")
    tags = _check_tags(list(request.tags))
    record_tenant = await backend.admin.get_tenant(tenant)
    if record_tenant.delete_time is not None:
        raise FailedPrecondition("the tenant is deleted", reason="TENANT_DELETED")
    limits = effective_limits(backend.settings, record_tenant.limits)
    header = inspect_image(request.content, ImageLimits(limits.max_image_bytes, limits.max_image_pixels))
    images, active = await backend.admin.usage(tenant)
    if active >= limits.max_concurrent_operations:
        raise ResourceExhausted(
            f"the tenant already has {active} operations in progress (limit {limits.max_concurrent_operations})",
            reason="TOO_MANY_OPERATIONS",
            quota=f"tenants/{tenant}:max_concurrent_operations",
            retry_after=1.0,
        )
    if images + active >= limits.max_images:
        raise ResourceExhausted(
            f"the tenant holds {images} images and {active} pending (limit {limits.max_images})",
            reason="IMAGE_QUOTA_EXCEEDED",
            quota=f"tenants/{tenant}:max_images",
        )
    sha256 = content_sha256(request.content)
    image_id = check_image_id(request.image_id) if request.image_id else sha256[:DEFAULT_ID_HEX_DIGITS]
    storage_uri = await backend.blobs.put(tenant, sha256, request.content)
    await backend.admin.ensure_collection(tenant, request.parent.collection)
    record, created = await backend.repo.create_operation(
        tenant,
        uuid.uuid4().hex,
        kind=operations.KIND_INGEST_IMAGE,
        state=operations.PENDING,
        total=1,
        payload={
            "collection_id": request.parent.collection,
            "image_id": image_id,
            "tags": tags,
            "sha256": sha256,
            "storage_uri": storage_uri,
            "size_bytes": len(request.content),
            "format": header.format,
        },
        request_id=request.request_id or None,
    )
    if record.end_time is None:
        if created:
            await backend.events.publish(tenant, record.id, state=record.state, stage=record.stage)
        # Enqueueing is idempotent (the job id is the operation's), so a retried request re-enqueues safely.
        await backend.queue.enqueue_operation(record.kind, tenant, record.id, trace_carrier)
    return record
