"""Similarity search: one query embedding, one scoped ANN query, rows joined from PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from deeplens_server.backend import Backend
from deeplens_server.errors import InvalidArgument
from deeplens_server.imaging import decode_image, model_input
from deeplens_server.names import CollectionName, ImageName, TenantName
from deeplens_server.repository import ImageRecord

DEFAULT_TOP_K = 10
MAX_TOP_K = 1000


@dataclass(frozen=True, slots=True)
class SearchQuery:
    scope: TenantName | CollectionName
    top_k: int
    min_score: float
    content: bytes | None = None
    image: ImageName | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    score: float
    image: ImageRecord


def check_query(top_k: int, min_score: float) -> tuple[int, float]:
    if top_k < 0 or top_k > MAX_TOP_K:
        raise InvalidArgument(f"top_k must be between 1 and {MAX_TOP_K}", field="top_k", reason="INVALID_TOP_K")
    if not -1.0 <= min_score <= 1.0 or min_score != min_score:
        raise InvalidArgument("min_score must be in [-1, 1]", field="min_score", reason="INVALID_MIN_SCORE")
    return top_k or DEFAULT_TOP_K, min_score


async def embed_content(backend: Backend, content: bytes, *, timeout: float | None) -> NDArray[np.float32]:
    """The query path's preprocessing is the ingest path's: ``decode_image`` then ``model_input``."""
    decoded = await asyncio.to_thread(decode_image, content, backend.limits)
    batch = model_input(decoded.working)[np.newaxis]
    embeddings: NDArray[np.float32] = await backend.embedder.embed(batch, timeout=timeout)
    return np.asarray(embeddings[0], dtype=np.float32)


async def search_similar(backend: Backend, query: SearchQuery, *, timeout: float | None) -> list[SearchHit]:
    tenant = query.scope.tenant
    exclude: tuple[str, str] | None = None
    if query.image is not None:
        embedding = await backend.vectors.get_embedding(tenant, query.image.collection, query.image.image)
        exclude = (query.image.collection, query.image.image)
    elif query.content is not None:
        embedding = await embed_content(backend, query.content, timeout=timeout)
    else:
        raise InvalidArgument("give image_content or image_name", field="query", reason="MISSING_QUERY")
    collection = query.scope.collection if isinstance(query.scope, CollectionName) else None
    hits = await backend.vectors.search(
        tenant, embedding, limit=query.top_k, collection_id=collection, exclude=exclude, timeout=timeout
    )
    hits = [h for h in hits if h.score >= query.min_score]
    rows = await backend.repo.get_images(tenant, [(h.collection_id, h.image_id) for h in hits])
    # A vector without its row is an ingest still committing; it is left out rather than shown half-made.
    return [
        SearchHit(h.score, rows[(h.collection_id, h.image_id)]) for h in hits if (h.collection_id, h.image_id) in rows
    ]
