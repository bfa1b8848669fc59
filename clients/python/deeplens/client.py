"""The synchronous DeepLens client over the generated stubs: auth, deadlines, retries on UNAVAILABLE with
backoff (gRPC's own retry policy, in the channel's service config), chunked uploads, operation waiting,
paging helpers, and error details. ``deeplens.aio`` is the asyncio twin."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.rpc import error_details_pb2, status_pb2

from deeplens.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    resources_pb2,
    search_service_pb2,
    search_service_pb2_grpc,
)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
MAX_MESSAGE_BYTES = 40 * 1024 * 1024
CHUNK_BYTES = 1 << 20
SERVICES = (
    "deeplens.v1.SearchService",
    "deeplens.v1.IngestService",
    "deeplens.v1.AdminService",
    "google.longrunning.Operations",
)
# Every call is retried while the server is UNAVAILABLE (restarting, overloaded, a connection dropped):
# up to 5 attempts, backing off 0.2 s, 0.4 s, ... up to 5 s. Ingest requests carry a request_id, so a retried
# ingest is not indexed twice.
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": s} for s in SERVICES],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", SERVICE_CONFIG),
]


def rpc_status(err: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a server attached to an error, if any."""
    call = cast(grpc.Call, err)
    for key, value in call.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def error_info(err: grpc.RpcError | status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ``ErrorInfo`` (reason, domain, metadata) of an RPC error or of an operation's error."""
    status = err if isinstance(err, status_pb2.Status) else rpc_status(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.TypeName() == error_details_pb2.ErrorInfo.DESCRIPTOR.full_name:
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def _image_chunks(
    item: int, image_id: str, tags: Sequence[str], pieces: Iterator[bytes]
) -> Iterator[ingest_service_pb2.UploadImagesRequest]:
    """One image's chunks: the first names it, the last says so (an empty image is one empty last chunk)."""
    data = next(pieces, b"")
    first = True
    while True:
        following = next(pieces, None)
        chunk = ingest_service_pb2.ImageChunk(item=item, data=data, last=following is None)
        if first:
            chunk.image_id = image_id
            chunk.tags.extend(tags)
            first = False
        yield ingest_service_pb2.UploadImagesRequest(chunk=chunk)
        if following is None:
            return
        data = following


def _header(parent: str, request_id: str) -> ingest_service_pb2.UploadImagesRequest:
    return ingest_service_pb2.UploadImagesRequest(
        header=ingest_service_pb2.UploadHeader(parent=parent, request_id=request_id)
    )


def upload_requests(
    parent: str,
    images: Iterable[tuple[bytes, str, Sequence[str]]],
    *,
    request_id: str = "",
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[ingest_service_pb2.UploadImagesRequest]:
    """The UploadImages stream for (content, image_id, tags) triples: a header, then each image in chunks."""
    yield _header(parent, request_id)
    for item, (content, image_id, tags) in enumerate(images):
        pieces = (content[start : start + chunk_bytes] for start in range(0, len(content), chunk_bytes))
        yield from _image_chunks(item, image_id, tags, pieces)


def file_upload_requests(
    parent: str,
    files: Iterable[tuple[Path, str]],
    *,
    tags: Sequence[str] = (),
    request_id: str = "",
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[ingest_service_pb2.UploadImagesRequest]:
    """The UploadImages stream for (path, image_id) pairs, read chunk by chunk: no file is held in memory."""
    yield _header(parent, request_id)
    for item, (path, image_id) in enumerate(files):
        with path.open("rb") as f:
            yield from _image_chunks(item, image_id, tags, iter(lambda: f.read(chunk_bytes), b""))


def search_request(
    parent: str,
    image_content: bytes | None,
    image_name: str | None,
    top_k: int,
    min_score: float,
    view: resources_pb2.ImageView.ValueType,
) -> search_service_pb2.SearchImagesRequest:
    """A SearchImages request by bytes or by an indexed image's name (the sync and async clients share it)."""
    request = search_service_pb2.SearchImagesRequest(parent=parent, top_k=top_k, min_score=min_score, view=view)
    if image_content is not None:
        request.image_content = image_content
    if image_name is not None:
        request.image_name = image_name
    return request


class _Page(Protocol):
    next_page_token: str


P = TypeVar("P", bound=_Page)


def pages(call: Callable[[Any], P], request: Any) -> Iterator[P]:
    """Every page of a List call (AIP-158): ``request`` is sent again with each next_page_token."""
    while True:
        page = call(request)
        yield page
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def operation_metadata(operation: operations_pb2.Operation) -> resources_pb2.OperationMetadata:
    metadata = resources_pb2.OperationMetadata()
    operation.metadata.Unpack(metadata)
    return metadata


def ingest_response(operation: operations_pb2.Operation) -> ingest_service_pb2.IngestImageResponse:
    response = ingest_service_pb2.IngestImageResponse()
    operation.response.Unpack(response)
    return response


class OperationFailed(Exception):
    """A finished operation that ended in an error: ``status`` is its ``google.rpc.Status``, ``reason`` the
    ``ErrorInfo`` reason in it (e.g. ``IMAGE_UNDECODABLE``; empty if it has none)."""

    def __init__(self, operation: operations_pb2.Operation) -> None:
        self.operation = operation
        self.status = operation.error
        info = error_info(operation.error)
        self.reason = info.reason if info is not None else ""
        super().__init__(f"{operation.name}: {self.reason or self.status.code}: {self.status.message}")


def indexed_image(operation: operations_pb2.Operation) -> resources_pb2.Image:
    """The image a finished IngestImage operation indexed; ``OperationFailed`` if it failed."""
    if not operation.done:
        raise ValueError(f"{operation.name} is not done")
    if operation.HasField("error"):
        raise OperationFailed(operation)
    return ingest_response(operation).image


class DeepLensClient:
    """Calls DeepLens with one API key. ``timeout`` is the default deadline per call, in seconds.

    ``root_certificates`` (PEM) switches to TLS; add ``certificate_chain`` and ``private_key`` for mutual TLS.
    ``interceptors`` (grpc client interceptors) wrap the channel. To trace calls end to end, instrument the
    process with OpenTelemetry (``GrpcInstrumentorClient().instrument()``); the server continues the trace.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str,
        timeout: float = 30.0,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        interceptors: Sequence[Any] = (),
    ) -> None:
        options = CHANNEL_OPTIONS
        if root_certificates is None:
            channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            channel = grpc.secure_channel(target, credentials, options=options)
        self._channel = grpc.intercept_channel(channel, *interceptors) if interceptors else channel
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._timeout = timeout
        self.search = search_service_pb2_grpc.SearchServiceStub(self._channel)
        self.ingest = ingest_service_pb2_grpc.IngestServiceStub(self._channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        self.operations = operations_pb2_grpc.OperationsStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> DeepLensClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata (the credentials) for using the stubs directly."""
        return self._metadata

    def create_tenant(
        self, tenant_id: str, display_name: str = "", limits: resources_pb2.TenantLimits | None = None
    ) -> resources_pb2.Tenant:
        request = admin_service_pb2.CreateTenantRequest(
            tenant_id=tenant_id, tenant=resources_pb2.Tenant(display_name=display_name, limits=limits)
        )
        reply = self.admin.CreateTenant(request, metadata=self._metadata, timeout=self._timeout)
        return reply.tenant

    def get_tenant(self, name: str) -> resources_pb2.Tenant:
        request = admin_service_pb2.GetTenantRequest(name=name)
        reply = self.admin.GetTenant(request, metadata=self._metadata, timeout=self._timeout)
        return reply.tenant

    def create_api_key(
        self, tenant: str, role: resources_pb2.Role.ValueType, display_name: str = ""
    ) -> tuple[resources_pb2.ApiKey, str]:
        """Creates a key for ``tenants/{tenant}``; returns it and its secret (shown only once)."""
        request = admin_service_pb2.CreateApiKeyRequest(
            parent=f"tenants/{tenant}", api_key=resources_pb2.ApiKey(role=role, display_name=display_name)
        )
        reply = self.admin.CreateApiKey(request, metadata=self._metadata, timeout=self._timeout)
        return reply.api_key, reply.secret

    def ingest_image(
        self,
        parent: str,
        content: bytes,
        *,
        image_id: str = "",
        tags: Iterable[str] = (),
        request_id: str = "",
    ) -> operations_pb2.Operation:
        request = ingest_service_pb2.IngestImageRequest(
            parent=parent, content=content, image_id=image_id, tags=list(tags), request_id=request_id
        )
        return self.ingest.IngestImage(request, metadata=self._metadata, timeout=self._timeout)

    def index_image(
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
        operation = self.ingest_image(parent, content, image_id=image_id, tags=tags, request_id=request_id)
        return indexed_image(self.wait_operation(operation.name, timeout=timeout))

    def upload_images(
        self,
        parent: str,
        images: Iterable[tuple[bytes, str, Sequence[str]]],
        *,
        request_id: str = "",
        chunk_bytes: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> operations_pb2.Operation:
        """Uploads (content, image_id, tags) triples as one operation, each image in chunks of ``chunk_bytes``."""
        requests = upload_requests(parent, images, request_id=request_id, chunk_bytes=chunk_bytes)
        return self.ingest.UploadImages(requests, metadata=self._metadata, timeout=timeout or self._timeout)

    def upload_files(
        self,
        parent: str,
        files: Iterable[tuple[Path, str]],
        *,
        tags: Sequence[str] = (),
        request_id: str = "",
        timeout: float | None = None,
    ) -> operations_pb2.Operation:
        """Uploads (path, image_id) pairs as one operation, streaming each file in chunks."""
        requests = file_upload_requests(parent, files, tags=tags, request_id=request_id)
        return self.ingest.UploadImages(requests, metadata=self._metadata, timeout=timeout or self._timeout)

    def get_operation(self, name: str) -> operations_pb2.Operation:
        request = operations_pb2.GetOperationRequest(name=name)
        reply = self.operations.GetOperation(request, metadata=self._metadata, timeout=self._timeout)
        return cast(operations_pb2.Operation, reply)

    def watch_operation(self, name: str, *, timeout: float | None = None) -> Iterator[operations_pb2.Operation]:
        """Yields the operation's state now and after each change; ends when it is done."""
        request = ingest_service_pb2.WatchOperationRequest(name=name)
        for reply in self.ingest.WatchOperation(request, metadata=self._metadata, timeout=timeout):
            yield reply.operation

    def wait_operation(self, name: str, *, timeout: float | None = None) -> operations_pb2.Operation:
        final: operations_pb2.Operation | None = None
        for update in self.watch_operation(name, timeout=timeout):
            final = update
        if final is None:
            raise RuntimeError(f"no update for {name}")
        return final

    def search_images(
        self,
        parent: str,
        *,
        image_content: bytes | None = None,
        image_name: str | None = None,
        top_k: int = 10,
        min_score: float = 0.0,
        view: resources_pb2.ImageView.ValueType = resources_pb2.IMAGE_VIEW_BASIC,
    ) -> search_service_pb2.SearchImagesResponse:
        """Images like the given bytes or indexed image; ``view=IMAGE_VIEW_FULL`` adds hashes and EXIF."""
        request = search_request(parent, image_content, image_name, top_k, min_score, view)
        return self.search.SearchImages(request, metadata=self._metadata, timeout=self._timeout)

    def find_duplicates(
        self, parent: str, *, image_name: str = "", image_content: bytes = b"", include_similar: bool = False
    ) -> search_service_pb2.FindDuplicatesResponse:
        request = search_service_pb2.FindDuplicatesRequest(parent=parent, include_similar=include_similar)
        if image_name:
            request.image_name = image_name
        else:
            request.image_content = image_content
        return self.search.FindDuplicates(request, metadata=self._metadata, timeout=self._timeout)

    def get_storage_report(self, parent: str) -> search_service_pb2.GetStorageReportResponse:
        request = search_service_pb2.GetStorageReportRequest(parent=parent)
        return self.search.GetStorageReport(request, metadata=self._metadata, timeout=self._timeout)

    def _list(self, method: Any) -> Callable[[Any], Any]:
        return lambda request: method(request, metadata=self._metadata, timeout=self._timeout)

    def iter_duplicate_groups(
        self, parent: str, *, include_resolved: bool = False, page_size: int = 100
    ) -> Iterator[resources_pb2.DuplicateGroup]:
        request = search_service_pb2.ListDuplicateGroupsRequest(
            parent=parent, include_resolved=include_resolved, page_size=page_size
        )
        for page in pages(self._list(self.search.ListDuplicateGroups), request):
            yield from page.duplicate_groups

    def iter_images(self, parent: str, *, page_size: int = 100) -> Iterator[resources_pb2.Image]:
        request = search_service_pb2.ListImagesRequest(parent=parent, page_size=page_size)
        for page in pages(self._list(self.search.ListImages), request):
            yield from page.images

    def iter_tenants(self, *, page_size: int = 100) -> Iterator[resources_pb2.Tenant]:
        request = admin_service_pb2.ListTenantsRequest(page_size=page_size)
        for page in pages(self._list(self.admin.ListTenants), request):
            yield from page.tenants

    def iter_api_keys(self, tenant: str, *, page_size: int = 100) -> Iterator[resources_pb2.ApiKey]:
        request = admin_service_pb2.ListApiKeysRequest(parent=f"tenants/{tenant}", page_size=page_size)
        for page in pages(self._list(self.admin.ListApiKeys), request):
            yield from page.api_keys

    def revoke_api_key(self, name: str) -> resources_pb2.ApiKey:
        request = admin_service_pb2.RevokeApiKeyRequest(name=name)
        return self.admin.RevokeApiKey(request, metadata=self._metadata, timeout=self._timeout).api_key

    def scan_storage_location(
        self, name: str, *, prefix: str = "", collection_id: str = ""
    ) -> operations_pb2.Operation:
        request = ingest_service_pb2.ScanStorageLocationRequest(name=name, prefix=prefix, collection_id=collection_id)
        return self.ingest.ScanStorageLocation(request, metadata=self._metadata, timeout=self._timeout)

    def get_tenant_stats(self, tenant: str) -> admin_service_pb2.GetTenantStatsResponse:
        request = admin_service_pb2.GetTenantStatsRequest(name=f"tenants/{tenant}")
        return self.admin.GetTenantStats(request, metadata=self._metadata, timeout=self._timeout)

    def get_system_health(self) -> admin_service_pb2.GetSystemHealthResponse:
        request = admin_service_pb2.GetSystemHealthRequest()
        return self.admin.GetSystemHealth(request, metadata=self._metadata, timeout=self._timeout)

    def list_models(self) -> list[admin_service_pb2.Model]:
        request = admin_service_pb2.ListModelsRequest()
        return list(self.admin.ListModels(request, metadata=self._metadata, timeout=self._timeout).models)

    def reindex_tenant(self, tenant: str, model: str) -> operations_pb2.Operation:
        """Starts moving ``tenant`` to ``model`` (``name@version``); searches switch when it is done."""
        request = admin_service_pb2.ReindexTenantRequest(name=f"tenants/{tenant}", model=model)
        return self.admin.ReindexTenant(request, metadata=self._metadata, timeout=self._timeout)
