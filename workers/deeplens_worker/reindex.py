"""One page of a re-index operation: embed the images again with the target model, from their uploaded
originals (or stored 600 px thumbnails), into the target model's collection.

Safe to run twice: vectors are upserts, and only items still pending are counted. The operation's last page
ends it — and, in the same transaction, switches the tenant's searches to the new model (``model_pointer``);
then the vectors of the model the tenant left are removed.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from deeplens_server import operations
from deeplens_server import reindex as server_reindex
from deeplens_server.backend import Backend
from deeplens_server.errors import DeepLensError, ImageRejected, NotFound
from deeplens_server.imaging import decode_image, model_input
from deeplens_server.operation_store import OperationRecord
from deeplens_server.status import to_rpc_status
from deeplens_server.vectors import VectorRecord
from numpy.typing import NDArray

_log = logging.getLogger(__name__)
SOURCE_THUMBNAIL = 600
EMBED_TIMEOUT_SECONDS = 60.0
_NO_COLOUR = np.zeros(0, dtype=np.float32)


async def _model_input(backend: Backend, tenant_id: str, sha256: str) -> NDArray[np.uint8]:
    """The model input ingest made: from the uploaded original when DeepLens stores it, else from the stored
    600 px thumbnail (images indexed from storage locations or URLs: a WebP of the working image ingest
    embedded)."""
    try:
        data = await backend.blobs.get(tenant_id, sha256)
    except NotFound:
        data = await backend.blobs.get_thumbnail(tenant_id, sha256, SOURCE_THUMBNAIL)
    decoded = await asyncio.to_thread(decode_image, data, backend.limits)
    return model_input(decoded.working)


async def reindex_items(backend: Backend, tenant_id: str, operation_id: str, items: list[int]) -> OperationRecord:
    record = await backend.ops.get(tenant_id, operation_id)
    if record.end_time is not None or record.paused:
        return record
    models = await backend.tenant_models(tenant_id)
    if models.operation_id != operation_id or models.reindex is None:
        return record  # this re-index has ended (cancelled): nothing to do
    target = models.reindex
    if record.state == operations.PENDING:
        record = await backend.ops.mark_running(tenant_id, operation_id, "embed")
        await backend.events.announce(record)
    pending = await backend.ops.pending_of(tenant_id, operation_id, items)
    keys = {i.item: (str(i.source["collection_id"]), str(i.source["image_id"])) for i in pending}
    rows = await backend.repo.get_images(tenant_id, list(keys.values()))
    results: list[tuple[int, int, bytes | None]] = []
    embed: list[tuple[int, NDArray[np.uint8]]] = []
    for item, key in keys.items():
        image = rows.get(key)
        if image is None:  # deleted since the re-index began: nothing to embed
            results.append((item, operations.ITEM_CANCELLED, None))
            continue
        try:
            embed.append((item, await _model_input(backend, tenant_id, image.sha256)))
        except (NotFound, ImageRejected, OSError) as exc:
            error = exc if isinstance(exc, DeepLensError) else ImageRejected(str(exc), reason="THUMBNAIL_UNREADABLE")
            results.append((item, operations.ITEM_FAILED, to_rpc_status(error).SerializeToString()))
    if embed:
        batch = np.stack([x for _, x in embed])
        vectors = await backend.embedder.embed(batch, model=target, timeout=EMBED_TIMEOUT_SECONDS)
        records = [
            VectorRecord.of(rows[keys[item]], vector, _NO_COLOUR)
            for (item, _), vector in zip(embed, vectors, strict=True)
        ]
        await backend.vectors.upsert(tenant_id, target, records, colour=False)
        # An image deleted while its page ran must not leave its new vector behind.
        still = await backend.repo.get_images(tenant_id, [keys[item] for item, _ in embed])
        gone = [keys[item] for item, _ in embed if keys[item] not in still]
        if gone:
            await backend.vectors.delete_images(tenant_id, gone)
        results += [(item, operations.ITEM_SUCCEEDED, None) for item, _ in embed]
    final = await backend.ops.finish_items(tenant_id, operation_id, results, outcome=operations.reindex_outcome)
    await backend.events.announce(final)
    if final.end_time is not None and record.end_time is None:
        await server_reindex.retire(backend, tenant_id, final)
    return final


async def fail_items(
    backend: Backend, tenant_id: str, operation_id: str, items: list[int], error: DeepLensError
) -> None:
    """Transient failures exhausted a page's retries: its items go to the dead letters, which fails the
    re-index (the tenant stays on its model)."""
    status = to_rpc_status(error).SerializeToString()
    record = await backend.ops.get(tenant_id, operation_id)
    final = await backend.ops.finish_items(
        tenant_id,
        operation_id,
        [(i, operations.ITEM_DEAD, status) for i in items],
        outcome=operations.reindex_outcome,
    )
    await backend.events.announce(final)
    if final.end_time is not None and record.end_time is None:
        await server_reindex.retire(backend, tenant_id, final)
