"""A small synchronous client over the generated stubs, with helpers for operations and error details."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import cast

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


def operation_metadata(operation: operations_pb2.Operation) -> resources_pb2.OperationMetadata:
    metadata = resources_pb2.OperationMetadata()
    operation.metadata.Unpack(metadata)
    return metadata


def ingest_response(operation: operations_pb2.Operation) -> ingest_service_pb2.IngestImageResponse:
    response = ingest_service_pb2.IngestImageResponse()
    operation.response.Unpack(response)
    return response


class DeepLensClient:
    """Calls DeepLens with one API key. ``timeout`` is the default deadline per call, in seconds.

    ``root_certificates`` (PEM) switches to TLS; add ``certificate_chain`` and ``private_key`` for mutual TLS.
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
    ) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if root_certificates is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=options)
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

    def upload_images(
        self,
        parent: str,
        images: Iterable[tuple[bytes, str, Sequence[str]]],
        *,
        request_id: str = "",
        chunk_bytes: int = 1 << 20,
        timeout: float | None = None,
    ) -> operations_pb2.Operation:
        """Uploads (content, image_id, tags) triples as one operation, each image in chunks of ``chunk_bytes``."""

        def requests() -> Iterator[ingest_service_pb2.UploadImagesRequest]:
            header = ingest_service_pb2.UploadHeader(parent=parent, request_id=request_id)
            yield ingest_service_pb2.UploadImagesRequest(header=header)
            for item, (content, image_id, tags) in enumerate(images):
                offsets = range(0, max(len(content), 1), chunk_bytes)
                for n, start in enumerate(offsets):
                    chunk = ingest_service_pb2.ImageChunk(
                        item=item, data=content[start : start + chunk_bytes], last=n == len(offsets) - 1
                    )
                    if n == 0:
                        chunk.image_id = image_id
                        chunk.tags.extend(tags)
                    yield ingest_service_pb2.UploadImagesRequest(chunk=chunk)

        return self.ingest.UploadImages(requests(), metadata=self._metadata, timeout=timeout or self._timeout)

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
    ) -> search_service_pb2.SearchImagesResponse:
        request = search_service_pb2.SearchImagesRequest(parent=parent, top_k=top_k, min_score=min_score)
        if image_content is not None:
            request.image_content = image_content
        if image_name is not None:
            request.image_name = image_name
        return self.search.SearchImages(request, metadata=self._metadata, timeout=self._timeout)
