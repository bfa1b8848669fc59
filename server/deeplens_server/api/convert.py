"""Domain records to protobuf messages."""

from __future__ import annotations

from deeplens.v1 import resources_pb2

from deeplens_server.operations import timestamp
from deeplens_server.repository import ImageRecord, TenantRecord


def tenant_to_proto(record: TenantRecord) -> resources_pb2.Tenant:
    return resources_pb2.Tenant(
        name=f"tenants/{record.id}",
        display_name=record.display_name,
        create_time=timestamp(record.create_time),
    )


def image_to_proto(record: ImageRecord) -> resources_pb2.Image:
    return resources_pb2.Image(
        name=f"tenants/{record.tenant_id}/collections/{record.collection_id}/images/{record.image_id}",
        sha256=record.sha256,
        storage_uri=record.storage_uri,
        format=record.format,
        width=record.width,
        height=record.height,
        size_bytes=record.size_bytes,
        phash=record.phash,
        dhash=record.dhash,
        tags=record.tags,
        model=record.model,
        create_time=timestamp(record.create_time),
    )
