"""Domain records to protobuf messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from deeplens.v1 import resources_pb2

from deeplens_server.admin_repository import ApiKeyRecord, AuditRecord, CollectionRecord, Limits, TenantRecord
from deeplens_server.operations import timestamp
from deeplens_server.repository import ImageRecord


def limits_to_proto(limits: Limits) -> resources_pb2.TenantLimits:
    return resources_pb2.TenantLimits(
        max_images=limits.max_images,
        max_image_bytes=limits.max_image_bytes,
        max_image_pixels=limits.max_image_pixels,
        requests_per_second=limits.requests_per_second,
        max_concurrent_operations=limits.max_concurrent_operations,
    )


def limits_from_proto(message: resources_pb2.TenantLimits) -> Limits:
    return Limits(
        max_images=message.max_images,
        max_image_bytes=message.max_image_bytes,
        max_image_pixels=message.max_image_pixels,
        requests_per_second=message.requests_per_second,
        max_concurrent_operations=message.max_concurrent_operations,
    )


def tenant_to_proto(record: TenantRecord) -> resources_pb2.Tenant:
    return resources_pb2.Tenant(
        name=f"tenants/{record.id}",
        display_name=record.display_name,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        delete_time=timestamp(record.delete_time),
        limits=limits_to_proto(record.limits),
        etag=record.etag,
    )


def collection_to_proto(record: CollectionRecord) -> resources_pb2.Collection:
    return resources_pb2.Collection(
        name=f"tenants/{record.tenant_id}/collections/{record.id}",
        display_name=record.display_name,
        create_time=timestamp(record.create_time),
        image_count=record.image_count,
    )


def api_key_to_proto(record: ApiKeyRecord) -> resources_pb2.ApiKey:
    parent = f"tenants/{record.tenant_id}" if record.tenant_id else "platform"
    return resources_pb2.ApiKey(
        name=f"{parent}/apiKeys/{record.id}",
        display_name=record.display_name,
        role=record.role,  # type: ignore[arg-type]
        create_time=timestamp(record.create_time),
        revoke_time=timestamp(record.revoke_time),
        last_use_time=timestamp(record.last_use_time),
    )


def audit_to_proto(record: AuditRecord) -> resources_pb2.AuditEvent:
    return resources_pb2.AuditEvent(
        name=f"tenants/{record.tenant_id}/auditEvents/{record.id}",
        time=timestamp(record.time),
        actor=record.actor,
        method=record.method,
        resource=record.resource,
        outcome=record.outcome,
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
        exif=exif_to_proto(record.exif),
        thumbnails=[THUMBNAIL_ENUM[size] for size in record.thumbnails if size in THUMBNAIL_ENUM],
    )


THUMBNAIL_ENUM = {
    150: resources_pb2.THUMBNAIL_SIZE_150,
    300: resources_pb2.THUMBNAIL_SIZE_300,
    600: resources_pb2.THUMBNAIL_SIZE_600,
}


def exif_to_proto(facts: dict[str, Any]) -> resources_pb2.Exif | None:
    if not facts:
        return None
    exif = resources_pb2.Exif(
        camera_make=facts.get("camera_make", ""),
        camera_model=facts.get("camera_model", ""),
        orientation=int(facts.get("orientation", 0)),
    )
    if "taken_time" in facts:
        exif.taken_time.FromDatetime(datetime.fromisoformat(facts["taken_time"]))
    if "latitude" in facts and "longitude" in facts:
        exif.has_location, exif.latitude, exif.longitude = True, facts["latitude"], facts["longitude"]
    return exif
