"""Duplicate candidates for one image: one ANN query over the tenant's embeddings plus one SHA-256 lookup, so
the cost per image stays flat as the library grows (no N x N comparison). Used at ingest and by FindDuplicates.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from deeplens_server.backend import Backend
from deeplens_server.duplicates import DuplicatePolicy, Fingerprint, Match, match, ranked
from deeplens_server.filters import ImageFilter, milvus_expr

DEFAULT_CANDIDATES = 50
MAX_CANDIDATES = 500
# At ingest: the nearest 20 are plenty — groups are transitive, so a copy beyond them still joins through one
# within — and each candidate costs the vector store a row to read back.
INGEST_CANDIDATES = 20


async def find_matches(
    backend: Backend,
    tenant_id: str,
    query: Fingerprint,
    embedding: NDArray[np.float32],
    *,
    policy: DuplicatePolicy,
    collection_id: str | None = None,
    exclude: tuple[str, str] | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    timeout: float | None = None,
) -> list[Match]:
    """Every candidate that is at least SIMILAR under ``policy``, strongest first."""
    condition = milvus_expr(ImageFilter(collections=(collection_id,))) if collection_id else ""
    hits = await backend.vectors.search(
        tenant_id, embedding, limit=candidates, condition=condition, exclude=exclude, timeout=timeout
    )
    found: dict[tuple[str, str], Match] = {}
    for hit in hits:
        f = hit.fields
        other = Fingerprint(str(f["sha256"]), str(f["phash"]), str(f["dhash"]), str(f["detail"]))
        m = match(policy, query, (hit.collection_id, hit.image_id), other, hit.score)
        if m is not None:
            found[m.key] = m
    # Exact copies beyond the ANN's reach (a library holding more copies than candidates) still count.
    for record in await backend.repo.same_content(tenant_id, query.sha256, limit=candidates):
        key = (record.collection_id, record.image_id)
        if key == exclude or key in found or (collection_id and record.collection_id != collection_id):
            continue
        m = match(policy, query, key, record.fingerprint, 1.0)
        if m is not None:
            found[key] = m
    return ranked(list(found.values()))
