from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from deeplens.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from google.longrunning import operations_proto_pb2 as operations_pb2
from opentelemetry import propagate

from deeplens_server import operations, paging
from deeplens_server.backend import Backend
from deeplens_server.errors import FailedPrecondition, InvalidArgument
from deeplens_server.ingest import ImageUpload, admit_tenant, submit_ingest, submit_upload, submit_url
from deeplens_server.names import (
    CollectionName,
    check_collection_id,
    parse_collection,
    parse_operation,
    parse_storage_location,
    parse_tenant,
)
from deeplens_server.operation_views import describe
from deeplens_server.tenancy import require_reader_of, require_tenant
from deeplens_server.watch import watch_operation, watch_tenant

Context = grpc.aio.ServicerContext[Any, Any]


def _carrier() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


async def _uploads(
    requests: AsyncIterator[ingest_service_pb2.UploadImagesRequest], max_bytes: int
) -> AsyncIterator[ImageUpload]:
    """Reassembles the chunked images of an UploadImages stream, one at a time (bounded memory)."""
    current: int | None = None
    parts: list[bytes] = []
    size = 0
    first = ingest_service_pb2.ImageChunk()
    async for request in requests:
        if request.WhichOneof("part") != "chunk":
            raise InvalidArgument("only the first message is a header", field="header", reason="HEADER_REPEATED")
        chunk = request.chunk
        if current is None or chunk.item != current:
            if current is not None and parts:
                raise InvalidArgument(
                    f"image {current} ended without a chunk marked last", field="chunk.last", reason="IMAGE_INCOMPLETE"
                )
            current, parts, size, first = chunk.item, [], 0, chunk
        size += len(chunk.data)
        if size > max_bytes + 1:
            raise InvalidArgument(
                f"image {current} exceeds {max_bytes} bytes", field="chunk.data", reason="IMAGE_TOO_LARGE"
            )
        parts.append(chunk.data)
        if chunk.last:
            yield ImageUpload(content=b"".join(parts), image_id=first.image_id, tags=tuple(first.tags))
            parts, size = [], 0
    if parts:
        raise InvalidArgument(f"image {current} ended without a chunk marked last", field="chunk.last",
                              reason="IMAGE_INCOMPLETE")  # fmt: skip


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def IngestImage(
        self, request: ingest_service_pb2.IngestImageRequest, context: Context
    ) -> operations_pb2.Operation:
        parent = parse_collection(request.parent)
        require_tenant(parent.tenant)
        upload = ImageUpload(content=request.content, image_id=request.image_id, tags=tuple(request.tags))
        if request.WhichOneof("source") == "source_uri":
            record = await submit_url(self._backend, parent, request.source_uri, upload, request.request_id, _carrier())
        else:
            record = await submit_ingest(self._backend, parent, upload, request.request_id, _carrier())
        return await describe(self._backend, record)

    async def UploadImages(
        self, request_iterator: AsyncIterator[ingest_service_pb2.UploadImagesRequest], context: Context
    ) -> operations_pb2.Operation:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("the first message must be the header", field="header", reason="HEADER_MISSING")
        parent: CollectionName = parse_collection(first.header.parent, "header.parent")
        require_tenant(parent.tenant)
        uploads = _uploads(request_iterator, self._backend.settings.max_image_bytes)
        record = await submit_upload(self._backend, parent, uploads, first.header.request_id, _carrier())
        return await describe(self._backend, record)

    async def ScanStorageLocation(
        self, request: ingest_service_pb2.ScanStorageLocationRequest, context: Context
    ) -> operations_pb2.Operation:
        name = parse_storage_location(request.name)
        tenant = require_tenant(name.tenant)
        location = await self._backend.locations.get(tenant, name.location)
        collection = check_collection_id(request.collection_id or location.id, "collection_id")
        if len(request.prefix) > 1024 or not request.prefix.isprintable():
            raise InvalidArgument("prefix is too long", field="prefix", reason="INVALID_PREFIX")
        await admit_tenant(self._backend, tenant)
        await self._backend.admin.ensure_collection(tenant, collection)
        record, _ = await self._backend.ops.create(
            tenant,
            uuid.uuid4().hex,
            kind=operations.KIND_SCAN_LOCATION,
            items=[],
            payload={"listing": True, "location": location.id, "prefix": request.prefix, "collection_id": collection},
        )
        await self._backend.events.announce(record)
        await self._backend.queue.enqueue_operation(record.kind, tenant, record.id, _carrier())
        return await describe(self._backend, record)

    async def WatchOperation(
        self, request: ingest_service_pb2.WatchOperationRequest, context: Context
    ) -> AsyncIterator[ingest_service_pb2.WatchOperationResponse]:
        name = parse_operation(request.name)
        tenant = require_reader_of(name.tenant)
        async for record in watch_operation(self._backend, tenant, name.operation):
            yield ingest_service_pb2.WatchOperationResponse(operation=await describe(self._backend, record))

    async def WatchOperations(
        self, request: ingest_service_pb2.WatchOperationsRequest, context: Context
    ) -> AsyncIterator[ingest_service_pb2.WatchOperationsResponse]:
        tenant = require_tenant(parse_tenant(request.parent, "parent").tenant)
        async for record, token in watch_tenant(self._backend, tenant, request.resume_token):
            yield ingest_service_pb2.WatchOperationsResponse(
                operation=await describe(self._backend, record), resume_token=token
            )

    async def ListOperationFailures(
        self, request: ingest_service_pb2.ListOperationFailuresRequest, context: Context
    ) -> ingest_service_pb2.ListOperationFailuresResponse:
        name = parse_operation(request.name)
        tenant = require_reader_of(name.tenant)
        await self._backend.ops.get(tenant, name.operation)
        size = paging.page_size(request.page_size)
        after = paging.decode(request.page_token)
        if after is not None and not after.lstrip("-").isdigit():
            raise InvalidArgument("page_token is not valid", field="page_token", reason="INVALID_PAGE_TOKEN")
        items = await self._backend.ops.items(
            tenant,
            name.operation,
            states=operations.ITEM_FAILED_STATES,
            after=int(after) if after is not None else -1,
            limit=size + 1,
        )
        page, token = paging.split_page(items, size, key=lambda i: str(i.item))
        return ingest_service_pb2.ListOperationFailuresResponse(
            failures=[operations.item_failure(i) for i in page], next_page_token=token
        )

    async def RetryDeadLetters(
        self, request: ingest_service_pb2.RetryDeadLettersRequest, context: Context
    ) -> operations_pb2.Operation:
        name = parse_operation(request.name)
        tenant = require_tenant(name.tenant)
        if (await self._backend.ops.get(tenant, name.operation)).kind == operations.KIND_REINDEX:
            raise FailedPrecondition(
                "a re-index that failed is not retried; start a new one", reason="REINDEX_NOT_RETRYABLE"
            )
        record, revived = await self._backend.ops.revive_dead_letters(tenant, name.operation)
        if revived:
            await self._backend.queue.enqueue_items(tenant, record.id, revived, record.generation, _carrier())
            await self._backend.events.announce(record)
        return await describe(self._backend, record)

    async def PauseOperation(
        self, request: ingest_service_pb2.PauseOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        name = parse_operation(request.name)
        tenant = require_tenant(name.tenant)
        record = await self._backend.ops.set_paused(tenant, name.operation, True)
        await self._backend.events.announce(record)
        return await describe(self._backend, record)

    async def ResumeOperation(
        self, request: ingest_service_pb2.ResumeOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        name = parse_operation(request.name)
        tenant = require_tenant(name.tenant)
        record = await self._backend.ops.set_paused(tenant, name.operation, False)
        pending = await self._backend.ops.pending_items(tenant, record.id)
        await self._backend.queue.enqueue_items(
            tenant, record.id, pending, record.generation, _carrier(), kind=record.kind
        )
        await self._backend.events.announce(record)
        return await describe(self._backend, record)
