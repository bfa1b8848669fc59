"""One image through the index: decode once, hash, embed, upsert the vector, commit the row.

Safe to run twice for the same operation (re-delivery after a crash): a finished operation is left alone,
and the vector and the row are upserts keyed by (tenant, collection, image), so nothing is doubled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from deeplens.v1 import ingest_service_pb2
from deeplens_server import operations
from deeplens_server.api.convert import image_to_proto
from deeplens_server.backend import Backend
from deeplens_server.errors import DeepLensError, ImageRejected
from deeplens_server.imaging import (
    DecodedImage,
    ImageLimits,
    PerceptualHashes,
    decode_image,
    model_input,
    perceptual_hashes,
)
from deeplens_server.repository import ImageRecord, OperationRecord
from deeplens_server.status import to_rpc_status
from deeplens_server.vectors import VectorRecord
from numpy.typing import NDArray

EMBED_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Analysis:
    decoded: DecodedImage
    hashes: PerceptualHashes
    model_input: NDArray[np.uint8]


def analyze(data: bytes, limits: ImageLimits) -> Analysis:
    """All CPU work on the bytes, from one decode (run in a thread)."""
    decoded = decode_image(data, limits)
    return Analysis(decoded, perceptual_hashes(decoded.working), model_input(decoded.working))


async def _stage(backend: Backend, record: OperationRecord, stage: str) -> OperationRecord:
    updated = await backend.repo.set_operation_stage(record.tenant_id, record.id, state=operations.RUNNING, stage=stage)
    await backend.events.publish(record.tenant_id, record.id, state=updated.state, stage=stage)
    return updated


async def fail_operation(backend: Backend, tenant_id: str, operation_id: str, error: DeepLensError) -> OperationRecord:
    record = await backend.repo.finish_operation(
        tenant_id, operation_id, state=operations.FAILED, error=to_rpc_status(error).SerializeToString()
    )
    await backend.events.publish(tenant_id, operation_id, state=record.state, stage=record.stage)
    return record


async def ingest_image(backend: Backend, tenant_id: str, operation_id: str) -> OperationRecord:
    record = await backend.repo.get_operation(tenant_id, operation_id)
    if record.end_time is not None:
        return record
    payload = record.payload
    record = await _stage(backend, record, "decode")
    data = await backend.blobs.get(tenant_id, payload["sha256"])
    try:
        analysis = await asyncio.to_thread(analyze, data, backend.limits)
    except ImageRejected as exc:
        return await fail_operation(backend, tenant_id, operation_id, exc)

    record = await _stage(backend, record, "embed")
    embedding = (await backend.embedder.embed(analysis.model_input[np.newaxis], timeout=EMBED_TIMEOUT_SECONDS))[0]

    record = await _stage(backend, record, "index")
    collection_id, image_id = payload["collection_id"], payload["image_id"]
    await backend.vectors.upsert(tenant_id, [VectorRecord(collection_id, image_id, embedding)])
    header = analysis.decoded.header
    image = ImageRecord(
        tenant_id=tenant_id,
        collection_id=collection_id,
        image_id=image_id,
        sha256=analysis.decoded.sha256,
        storage_uri=payload["storage_uri"],
        format=header.format,
        width=header.width,
        height=header.height,
        size_bytes=analysis.decoded.size_bytes,
        phash=analysis.hashes.phash,
        dhash=analysis.hashes.dhash,
        model=backend.embedder.model_id,
        tags=list(payload.get("tags", [])),
    )
    response = ingest_service_pb2.IngestImageResponse(image=image_to_proto(image))
    record = await backend.repo.finish_operation(
        tenant_id, operation_id, state=operations.SUCCEEDED, response=operations.pack(response), image=image
    )
    await backend.events.publish(tenant_id, operation_id, state=record.state, stage=record.stage)
    return record
