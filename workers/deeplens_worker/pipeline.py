"""One image of an ingest operation through the index: decode once, hash, embed, upsert the vector, then
commit the row and count the item in one transaction.

Safe to run twice for the same item (re-delivery after a crash): the item is counted only when it leaves
PENDING, and the vector and the row are upserts keyed by (tenant, collection, image), so nothing doubles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from deeplens.v1 import ingest_service_pb2
from deeplens_server import locations, operations
from deeplens_server.api.convert import image_to_proto
from deeplens_server.backend import Backend
from deeplens_server.duplicate_store import LateMatcher
from deeplens_server.duplicates import Fingerprint, Match
from deeplens_server.errors import DeepLensError, ImageRejected, NotFound
from deeplens_server.fetch import fetch_image
from deeplens_server.imaging import (
    DecodedImage,
    ImageLimits,
    PerceptualHashes,
    colour_signature,
    decode_image,
    model_input,
    perceptual_hashes,
    thumbnails,
)
from deeplens_server.keypoints import Keypoints, keypoints
from deeplens_server.matching import INGEST_CANDIDATES, find_matches, late_matcher
from deeplens_server.metrics import IMAGES, STAGE_SECONDS
from deeplens_server.names import image_name
from deeplens_server.operation_store import OperationRecord
from deeplens_server.repository import ImageRecord
from deeplens_server.status import to_rpc_status
from deeplens_server.storage import object_uri, read_object, validate
from deeplens_server.vectors import VectorRecord
from numpy.typing import NDArray
from prometheus_client.context_managers import Timer

_log = logging.getLogger(__name__)
EMBED_TIMEOUT_SECONDS = 60.0
_OUTCOMES = {
    operations.ITEM_SUCCEEDED: "indexed",
    operations.ITEM_FAILED: "failed",
    operations.ITEM_DEAD: "dead_letter",
}

Outcome = Callable[[OperationRecord, bytes | None], tuple[int, bytes | None, bytes | None]]


@dataclass(frozen=True, slots=True)
class Analysis:
    decoded: DecodedImage
    hashes: PerceptualHashes
    model_input: NDArray[np.uint8]
    thumbnails: dict[int, bytes]
    colour: NDArray[np.float32]
    # Verification features, stored beside the thumbnails: a later image that may be a crop or an edit of
    # this one is verified against them without decoding this one's thumbnail.
    keypoints: Keypoints


def analyze(data: bytes, limits: ImageLimits) -> Analysis:
    """All CPU work on the bytes, from one decode (run in a thread)."""
    with _stage("decode"):
        decoded = decode_image(data, limits)
    working = decoded.working
    with _stage("hashes"):
        hashes = perceptual_hashes(working)
    with _stage("model_input"):
        tensor = model_input(working)
    with _stage("thumbnails"):
        made = thumbnails(working)
    with _stage("colour"):
        colour = colour_signature(working)
    with _stage("keypoints"):
        features = keypoints(working)
    return Analysis(decoded, hashes, tensor, made, colour, features)


def _stage(name: str) -> Timer:
    return STAGE_SECONDS.labels(name).time()


def outcome_for(record: OperationRecord, image: ImageRecord | None) -> Outcome:
    """A single-image operation answers with its image; a batch with its counts."""
    if record.kind == operations.KIND_INGEST_IMAGE and image is not None:
        response = operations.pack(ingest_service_pb2.IngestImageResponse(image=image_to_proto(image)))

        def single(final: OperationRecord, last_error: bytes | None) -> tuple[int, bytes | None, bytes | None]:
            state, _, error = operations.batch_outcome(final, last_error)
            return (state, response, None) if state == operations.SUCCEEDED else (state, None, error)

        return single
    if record.kind == operations.KIND_SCAN_LOCATION:
        return operations.scan_outcome
    return operations.batch_outcome


async def _finish(
    backend: Backend,
    record: OperationRecord,
    item: int,
    state: int,
    *,
    error: DeepLensError | None = None,
    image: ImageRecord | None = None,
    matches: Sequence[Match] = (),
    late_matches: LateMatcher | None = None,
    embedded_under: int | None = None,
) -> OperationRecord:
    final, counted = await backend.ops.finish_item(
        record.tenant_id,
        record.id,
        item,
        state=state,
        outcome=outcome_for(record, image),
        error=to_rpc_status(error).SerializeToString() if error is not None else None,
        image=image,
        matches=matches,
        late_matches=late_matches,
        embedded_under=embedded_under,
    )
    if counted:
        IMAGES.labels(_OUTCOMES.get(state, "other")).inc()
        await backend.events.announce(final)
    return final


async def fail_item(backend: Backend, tenant_id: str, operation_id: str, item: int, error: DeepLensError) -> None:
    """Transient failures exhausted the item's retries: it goes to the dead letters (retryable later)."""
    record = await backend.ops.get(tenant_id, operation_id)
    await _finish(backend, record, item, operations.ITEM_DEAD, error=error)


async def _read(backend: Backend, tenant_id: str, source: dict[str, Any], max_bytes: int) -> tuple[bytes, str]:
    """The item's bytes and where they live: an uploaded original, or an object in a storage location (at
    most ``max_bytes``, the tenant's limit)."""
    if "url" in source:
        data = await fetch_image(source["url"], backend.storage_policy, max_bytes)
        return data, source["url"]
    if "location" not in source:
        return await backend.blobs.get(tenant_id, source["sha256"]), source["storage_uri"]
    if int(source.get("size_bytes", 0)) > max_bytes:
        raise ImageRejected(
            f"the object is {source['size_bytes']} bytes; the limit is {max_bytes}",
            field="path",
            reason="IMAGE_TOO_LARGE",
            metadata={"size_bytes": str(source["size_bytes"]), "max_bytes": str(max_bytes)},
        )
    location = await backend.locations.get(tenant_id, source["location"])
    spec = validate(locations.spec_of(backend, location), backend.storage_policy)
    data = await asyncio.to_thread(read_object, spec, source["path"])
    return data, object_uri(spec, source["path"])


async def ingest_item(backend: Backend, tenant_id: str, operation_id: str, item: int) -> OperationRecord:
    record = await backend.ops.get(tenant_id, operation_id)
    if record.end_time is not None or record.paused:
        return record  # done, or paused: a resume re-delivers the item under a new generation
    current = await backend.ops.item(tenant_id, operation_id, item)
    if current.state != operations.ITEM_PENDING:
        return record
    source = current.source
    if record.state == operations.PENDING:
        record = await backend.ops.mark_running(tenant_id, operation_id, "index")
        await backend.events.announce(record)
    # The tenant's limits apply to what a scan or a URL brings as to uploads. The image is embedded with the
    # tenant's model and with the one a running re-index is filling (see model_pointer: a change of models
    # while this image is analysed is caught when it is stored).
    settings = await backend.tenant_settings(tenant_id)
    models, policy = settings.models, settings.policy
    try:
        with _stage("read"):
            data, storage_uri = await _read(backend, tenant_id, source, settings.limits.max_bytes)
        analysis = await asyncio.to_thread(analyze, data, settings.limits)
    except (ImageRejected, NotFound) as exc:
        return await _finish(backend, record, item, operations.ITEM_FAILED, error=exc)

    batch = analysis.model_input[np.newaxis]
    with _stage("embed"):
        embedded = await asyncio.gather(
            *(backend.embedder.embed(batch, model=m, timeout=EMBED_TIMEOUT_SECONDS) for m in models.writes)
        )
    embedding = embedded[0][0]
    collection_id, image_id = source["collection_id"], source["image_id"]
    header, hashes, sha256 = analysis.decoded.header, analysis.hashes, analysis.decoded.sha256
    image = ImageRecord(
        tenant_id=tenant_id,
        collection_id=collection_id,
        image_id=image_id,
        sha256=sha256,
        storage_uri=storage_uri,
        format=header.format,
        width=header.width,
        height=header.height,
        size_bytes=analysis.decoded.size_bytes,
        phash=hashes.phash,
        dhash=hashes.dhash,
        model=models.active,
        tags=list(source.get("tags", [])),
        exif=analysis.decoded.exif,
        thumbnails=sorted(analysis.thumbnails),
        location_id=source.get("location", ""),
        detail_hash=hashes.detail,
        hash_variants=[":".join(v) for v in hashes.variants],
    )
    vector = VectorRecord.of(image, embedding, analysis.colour)
    with _stage("vectors"):
        await backend.vectors.upsert(tenant_id, models.active, [vector])
        if models.reindex is not None:
            again = replace(vector, embedding=embedded[1][0])
            await backend.vectors.upsert(tenant_id, models.reindex, [again], colour=False)
    with _stage("store_thumbnails"):
        features = analysis.keypoints.to_bytes()
        await backend.blobs.put_thumbnails(tenant_id, sha256, analysis.thumbnails, features=features)
    query = Fingerprint(sha256, hashes.phash, hashes.dhash, hashes.detail, hashes.variants)
    examined: set[tuple[str, str]] = set()
    with _stage("match"):
        matches = await find_matches(
            backend,
            tenant_id,
            query,
            embedding,
            model=models.active,
            policy=policy,
            query_keypoints=lambda: analysis.keypoints,
            exclude=(collection_id, image_id),
            candidates=INGEST_CANDIDATES,
            examined=examined,
        )
    late = late_matcher(
        backend,
        tenant_id,
        query,
        embedding,
        model=models.active,
        policy=policy,
        exclude=(collection_id, image_id),
        examined=examined,
    )
    with _stage("commit"):
        final = await _finish(
            backend,
            record,
            item,
            operations.ITEM_SUCCEEDED,
            image=image,
            matches=matches,
            late_matches=late,
            embedded_under=models.generation,
        )
    _log.info("indexed %s", image_name(tenant_id, collection_id, image_id))
    return final
