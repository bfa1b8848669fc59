"""Domain records to protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from deeplens.v1 import resources_pb2
from google.protobuf import timestamp_pb2

from deeplens_server import filters
from deeplens_server.admin_repository import ApiKeyRecord, AuditRecord, CollectionRecord, Limits, TenantRecord
from deeplens_server.duplicates import DEFAULT_POLICY, DuplicatePolicy
from deeplens_server.errors import InvalidArgument
from deeplens_server.filters import ImageFilter
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
        duplicate_policy=policy_to_proto(DEFAULT_POLICY.override(record.duplicate_policy)),
        embedding_model=record.embedding_model or "",
        reindex_model=record.reindex_model or "",
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


def image_to_proto(record: ImageRecord, view: int = resources_pb2.IMAGE_VIEW_FULL) -> resources_pb2.Image:
    tenant = record.tenant_id
    image = resources_pb2.Image(
        name=f"tenants/{tenant}/collections/{record.collection_id}/images/{record.image_id}",
        storage_uri=record.storage_uri,
        storage_location=f"tenants/{tenant}/storageLocations/{record.location_id}" if record.location_id else "",
        format=record.format,
        width=record.width,
        height=record.height,
        size_bytes=record.size_bytes,
        create_time=timestamp(record.create_time),
    )
    if view == resources_pb2.IMAGE_VIEW_FULL:
        image.sha256 = record.sha256
        image.phash = record.phash
        image.dhash = record.dhash
        image.tags.extend(record.tags)
        image.model = record.model
        exif = exif_to_proto(record.exif)
        if exif is not None:
            image.exif.CopyFrom(exif)
        image.thumbnails.extend(THUMBNAIL_ENUM[size] for size in record.thumbnails if size in THUMBNAIL_ENUM)
        image.duplicate_group = f"tenants/{tenant}/duplicateGroups/{record.group_id}" if record.group_id else ""
    return image


def check_view(view: int, default: int) -> int:
    if view not in (0, resources_pb2.IMAGE_VIEW_BASIC, resources_pb2.IMAGE_VIEW_FULL):
        raise InvalidArgument("unknown view", field="view", reason="INVALID_VIEW")
    return view or default


def filter_from_proto(message: resources_pb2.ImageFilter) -> ImageFilter:
    def when(ts: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
        return ts.ToDatetime(tzinfo=UTC) if present else None

    return filters.check(
        ImageFilter(
            collections=tuple(message.collections),
            tags=tuple(message.tags),
            storage_locations=tuple(message.storage_locations),
            formats=tuple(message.formats),
            min_width=message.min_width,
            max_width=message.max_width,
            min_height=message.min_height,
            max_height=message.max_height,
            created_after=when(message.create_time_after, message.HasField("create_time_after")),
            created_before=when(message.create_time_before, message.HasField("create_time_before")),
        )
    )


def policy_to_proto(policy: DuplicatePolicy) -> resources_pb2.DuplicatePolicy:
    return resources_pb2.DuplicatePolicy(
        max_phash_distance=policy.max_phash_distance,
        max_dhash_distance=policy.max_dhash_distance,
        max_detail_distance=policy.max_detail_distance,
        near_duplicate_min_cosine=policy.near_duplicate_min_cosine,
        embedding_max_hash_distance=policy.embedding_max_hash_distance,
        similar_min_cosine=policy.similar_min_cosine,
        keypoint_min_inliers=policy.keypoint_min_inliers,
        keypoint_min_agreement=policy.keypoint_min_agreement,
    )


def policy_overrides(message: resources_pb2.DuplicatePolicy) -> dict[str, Any]:
    return {
        "max_phash_distance": message.max_phash_distance,
        "max_dhash_distance": message.max_dhash_distance,
        "max_detail_distance": message.max_detail_distance,
        "near_duplicate_min_cosine": message.near_duplicate_min_cosine,
        "embedding_max_hash_distance": message.embedding_max_hash_distance,
        "similar_min_cosine": message.similar_min_cosine,
        "keypoint_min_inliers": message.keypoint_min_inliers,
        "keypoint_min_agreement": message.keypoint_min_agreement,
    }


class Evidence(Protocol):
    """What a stored link and a fresh match both know about a pair."""

    @property
    def tier(self) -> int: ...

    @property
    def rule(self) -> str: ...

    @property
    def phash_distance(self) -> int: ...

    @property
    def dhash_distance(self) -> int: ...

    @property
    def detail_distance(self) -> int: ...

    @property
    def cosine(self) -> float: ...

    @property
    def keypoint_inliers(self) -> int: ...

    @property
    def keypoint_agreement(self) -> float: ...


def scores_to_proto(e: Evidence) -> resources_pb2.MatchScores:
    return resources_pb2.MatchScores(
        phash_distance=e.phash_distance, dhash_distance=e.dhash_distance, detail_distance=e.detail_distance,
        cosine=e.cosine, keypoint_inliers=e.keypoint_inliers, keypoint_agreement=e.keypoint_agreement,
    )  # fmt: skip


def match_to_proto(image: resources_pb2.Image, e: Evidence) -> resources_pb2.DuplicateMatch:
    return resources_pb2.DuplicateMatch(
        image=image,
        tier=e.tier,  # type: ignore[arg-type]
        scores=scores_to_proto(e),
        rule=e.rule,
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
