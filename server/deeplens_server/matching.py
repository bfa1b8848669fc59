"""Duplicate candidates for one image: one ANN query over the tenant's embeddings plus one SHA-256 lookup, so
the cost per image stays flat as the library grows (no N x N comparison). Used at ingest and by FindDuplicates.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from deeplens_server.backend import Backend
from deeplens_server.duplicates import DuplicatePolicy, Fingerprint, Match, match, ranked
from deeplens_server.filters import ImageFilter, milvus_expr, within
from deeplens_server.imaging import phash_bands

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
    condition = milvus_expr(within(ImageFilter(), collection_id))
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
    # Copies beyond the ANN's reach — the same bytes, or a close pHash in any orientation (an embedding can
    # move far under rotation or heavy recompression while the hashes stay put) — through an indexed lookup.
    bands = sorted({band for p in (query.phash, *(v[0] for v in query.variants)) for band in phash_bands(p)})
    extra = [
        r
        for r in await backend.repo.hash_neighbours(
            tenant_id, query.sha256, bands, collection_id=collection_id, limit=max(candidates, 50)
        )
        if (r.collection_id, r.image_id) not in (exclude, *found)
    ]
    vectors = await backend.vectors.get_vectors(tenant_id, [(r.collection_id, r.image_id) for r in extra])
    for record in extra:
        key = (record.collection_id, record.image_id)
        vector = vectors.get(key)
        cosine = float(np.dot(embedding, vector)) if vector is not None else 0.0
        m = match(policy, query, key, record.fingerprint, cosine)
        if m is not None:
            found[key] = m
    return ranked(list(found.values()))
