"""The asyncio DeepLens client (grpc.aio): the same calls as ``deeplens.client.DeepLensClient``, awaited.

async with AsyncDeepLensClient("127.0.0.1:50051", api_key=key) as client:
    op = await client.ingest_image("tenants/acme/collections/photos", data, image_id="cat")
    async for update in client.watch_operation(op.name):
        print(operation_metadata(update).processed)
    hits = await client.search_images("tenants/acme", image_content=data, top_k=5)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import cast

import grpc
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as operations_pb2

from deeplens.client import (
    CHANNEL_OPTIONS,
    CHUNK_BYTES,
    file_upload_requests,
    indexed_image,
    search_request,
    upload_requests,
)
from deeplens.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    resources_pb2,
    search_service_pb2,
    search_service_pb2_grpc,
)


class AsyncDeepLensClient:
    """Calls DeepLens with one API key from asyncio code. ``timeout`` is the default deadline per call."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str,
        timeout: float = 30.0,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
    ) -> None:
        if root_certificates is None:
            self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self._channel = grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._timeout = timeout
        self.search = search_service_pb2_grpc.SearchServiceStub(self._channel)
        self.ingest = ingest_service_pb2_grpc.IngestServiceStub(self._channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        self.operations = operations_pb2_grpc.OperationsStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> AsyncDeepLensClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def ingest_image(
        self, parent: str, content: bytes, *, image_id: str = "", tags: Iterable[str] = (), request_id: str = ""
    ) -> operations_pb2.Operation:
        request = ingest_service_pb2.IngestImageRequest(
            parent=parent, content=content, image_id=image_id, tags=list(tags), request_id=request_id
        )
        return await self.ingest.IngestImage(request, metadata=self._metadata, timeout=self._timeout)

    async def index_image(
        self,
        parent: str,
        content: bytes,
        *,
        image_id: str = "",
        tags: Iterable[str] = (),
        request_id: str = "",
        timeout: float | None = None,
    ) -> resources_pb2.Image:
        """Ingests one image and waits (up to ``timeout`` seconds) until it is searchable; returns the indexed
        image, or raises ``OperationFailed`` with the reason it was not indexed."""
        operation = await self.ingest_image(parent, content, image_id=image_id, tags=tags, request_id=request_id)
        return indexed_image(await self.wait_operation(operation.name, timeout=timeout))

    async def upload_images(
        self,
        parent: str,
        images: Iterable[tuple[bytes, str, Sequence[str]]],
        *,
        request_id: str = "",
        chunk_bytes: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> operations_pb2.Operation:
        requests = upload_requests(parent, images, request_id=request_id, chunk_bytes=chunk_bytes)
        return await self.ingest.UploadImages(requests, metadata=self._metadata, timeout=timeout or self._timeout)

    async def upload_files(
        self, parent: str, files: Iterable[tuple[Path, str]], *, tags: Sequence[str] = (), request_id: str = ""
    ) -> operations_pb2.Operation:
        requests = file_upload_requests(parent, files, tags=tags, request_id=request_id)
        return await self.ingest.UploadImages(requests, metadata=self._metadata, timeout=self._timeout)

    async def get_operation(self, name: str) -> operations_pb2.Operation:
        request = operations_pb2.GetOperationRequest(name=name)
        reply = await self.operations.GetOperation(request, metadata=self._metadata, timeout=self._timeout)
        return cast(operations_pb2.Operation, reply)

    async def watch_operation(
        self, name: str, *, timeout: float | None = None
    ) -> AsyncIterator[operations_pb2.Operation]:
        """The operation now and after each change; ends when it is done."""
        request = ingest_service_pb2.WatchOperationRequest(name=name)
        call = self.ingest.WatchOperation(request, metadata=self._metadata, timeout=timeout)
        async for reply in call:
            yield reply.operation

    async def wait_operation(self, name: str, *, timeout: float | None = None) -> operations_pb2.Operation:
        final: operations_pb2.Operation | None = None
        async for update in self.watch_operation(name, timeout=timeout):
            final = update
        if final is None:
            raise RuntimeError(f"no update for {name}")
        return final

    async def search_images(
        self,
        parent: str,
        *,
        image_content: bytes | None = None,
        image_name: str | None = None,
        top_k: int = 10,
        min_score: float = 0.0,
        view: resources_pb2.ImageView.ValueType = resources_pb2.IMAGE_VIEW_BASIC,
    ) -> search_service_pb2.SearchImagesResponse:
        request = search_request(parent, image_content, image_name, top_k, min_score, view)
        return await self.search.SearchImages(request, metadata=self._metadata, timeout=self._timeout)

    async def iter_duplicate_groups(
        self, parent: str, *, include_resolved: bool = False, page_size: int = 100
    ) -> AsyncIterator[resources_pb2.DuplicateGroup]:
        request = search_service_pb2.ListDuplicateGroupsRequest(
            parent=parent, include_resolved=include_resolved, page_size=page_size
        )
        while True:
            page = await self.search.ListDuplicateGroups(request, metadata=self._metadata, timeout=self._timeout)
            for group in page.duplicate_groups:
                yield group
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def get_storage_report(self, parent: str) -> search_service_pb2.GetStorageReportResponse:
        request = search_service_pb2.GetStorageReportRequest(parent=parent)
        return await self.search.GetStorageReport(request, metadata=self._metadata, timeout=self._timeout)

    async def get_tenant(self, name: str) -> resources_pb2.Tenant:
        request = admin_service_pb2.GetTenantRequest(name=name)
        reply = await self.admin.GetTenant(request, metadata=self._metadata, timeout=self._timeout)
        return reply.tenant
