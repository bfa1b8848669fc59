"""Accepting an ingest: validate, keep the bytes, persist the operation, enqueue. Never waits for the work."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from deeplens_server import operations
from deeplens_server.backend import Backend
from deeplens_server.errors import InvalidArgument
from deeplens_server.imaging import content_sha256, inspect_image
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
    header = inspect_image(request.content, backend.limits)
    await backend.repo.get_tenant(tenant)
    sha256 = content_sha256(request.content)
    image_id = check_image_id(request.image_id) if request.image_id else sha256[:DEFAULT_ID_HEX_DIGITS]
    storage_uri = await backend.blobs.put(tenant, sha256, request.content)
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
        await backend.queue.enqueue_ingest(tenant, record.id, trace_carrier)
    return record
