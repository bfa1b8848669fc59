"""Similarity search: one query embedding (and colour signature), scoped and filtered ANN queries, rows joined
from PostgreSQL. Rankings: VISUAL (embedding cosine), COLOUR (histogram Bhattacharyya coefficient), or a
weighted COMBINED score computed exactly for the union of both queries' candidates."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from deeplens_server.backend import Backend
from deeplens_server.errors import InvalidArgument
from deeplens_server.fetch import fetch_image
from deeplens_server.filters import ImageFilter, within
from deeplens_server.imaging import DecodedImage, ImageLimits, colour_signature, decode_image, model_input
from deeplens_server.names import CollectionName, ImageName, TenantName
from deeplens_server.repository import ImageRecord

DEFAULT_TOP_K = 10
MAX_TOP_K = 1000
# Results end here, over all pages (the ANN's window).
MAX_RESULTS = 1000
DEFAULT_COLOUR_WEIGHT = 0.3

VISUAL, COLOUR, COMBINED = 1, 2, 3


@dataclass(frozen=True, slots=True)
class SearchQuery:
    scope: TenantName | CollectionName
    top_k: int
    min_score: float
    content: bytes | None = None
    image: ImageName | None = None
    url: str | None = None
    image_filter: ImageFilter = field(default_factory=ImageFilter)
    ranking: int = VISUAL
    colour_weight: float = DEFAULT_COLOUR_WEIGHT
    offset: int = 0


@dataclass(frozen=True, slots=True)
class SearchHit:
    score: float
    image: ImageRecord
    visual: float
    colour: float | None


def check_query(top_k: int, min_score: float) -> tuple[int, float]:
    if top_k < 0 or top_k > MAX_TOP_K:
        raise InvalidArgument(f"top_k must be between 1 and {MAX_TOP_K}", field="top_k", reason="INVALID_TOP_K")
    if not -1.0 <= min_score <= 1.0 or min_score != min_score:
        raise InvalidArgument("min_score must be in [-1, 1]", field="min_score", reason="INVALID_MIN_SCORE")
    return top_k or DEFAULT_TOP_K, min_score


def check_ranking(ranking: int, colour_weight: float) -> tuple[int, float]:
    if ranking not in (0, VISUAL, COLOUR, COMBINED):
        raise InvalidArgument("unknown ranking", field="ranking", reason="INVALID_RANKING")
    if not 0.0 <= colour_weight <= 1.0 or colour_weight != colour_weight:
        raise InvalidArgument("colour_weight must be in [0, 1]", field="colour_weight", reason="INVALID_COLOUR_WEIGHT")
    return ranking or VISUAL, colour_weight or DEFAULT_COLOUR_WEIGHT


async def decode_query(content: bytes, limits: ImageLimits) -> DecodedImage:
    """A query image, held to the tenant's image limits."""
    return await asyncio.to_thread(decode_image, content, limits)


async def embed_decoded(
    backend: Backend, decoded: DecodedImage, *, model: str, timeout: float | None
) -> NDArray[np.float32]:
    """The query path's preprocessing is the ingest path's: ``decode_image`` then ``model_input``; the model
    is the same graph, through the inference server's query lane."""
    batch = model_input(decoded.working)[np.newaxis]
    embeddings: NDArray[np.float32] = await backend.embedder.embed(batch, model=model, timeout=timeout, lane="query")
    return np.asarray(embeddings[0], dtype=np.float32)


async def query_content(backend: Backend, query: SearchQuery, limits: ImageLimits) -> bytes | None:
    if query.url is not None:
        return await fetch_image(query.url, backend.storage_policy, limits.max_bytes)
    return query.content


async def search_similar(
    backend: Backend, query: SearchQuery, *, model: str, limits: ImageLimits, timeout: float | None
) -> list[SearchHit]:
    """The query's nearest images under ``model`` (the tenant's), the query embedded with the same model and
    held to ``limits`` (the tenant's)."""
    tenant = query.scope.tenant
    exclude: tuple[str, str] | None = None
    colour: NDArray[np.float32] | None = None
    content = await query_content(backend, query, limits)
    if query.image is not None:
        exclude = (query.image.collection, query.image.image)
        embedding = await backend.vectors.get_embedding(tenant, *exclude, model=model)
        if query.ranking != VISUAL:
            colours = await backend.vectors.get_vectors(tenant, [exclude], model=model, signal="colour")
            colour = colours.get(exclude)
    elif content is not None:
        decoded = await decode_query(content, limits)
        embedding = await embed_decoded(backend, decoded, model=model, timeout=timeout)
        if query.ranking != VISUAL:
            colour = await asyncio.to_thread(colour_signature, decoded.working)
    else:
        raise InvalidArgument("give image_content, image_name or image_uri", field="query", reason="MISSING_QUERY")
    scope_collection = query.scope.collection if isinstance(query.scope, CollectionName) else None
    image_filter = within(query.image_filter, scope_collection)
    window = query.offset + query.top_k

    visual_scores: dict[tuple[str, str], float] = {}
    colour_scores: dict[tuple[str, str], float] = {}
    if query.ranking in (VISUAL, COMBINED):
        limit = window if query.ranking == VISUAL else max(3 * window, 100)
        for h in await backend.vectors.search(
            tenant, embedding, model=model, limit=min(limit, MAX_RESULTS * 3), image_filter=image_filter,
            exclude=exclude, timeout=timeout,
        ):  # fmt: skip
            visual_scores[(h.collection_id, h.image_id)] = h.score
    if query.ranking in (COLOUR, COMBINED) and colour is not None:
        limit = window if query.ranking == COLOUR else max(3 * window, 100)
        for h in await backend.vectors.search(
            tenant, colour, model=model, limit=min(limit, MAX_RESULTS * 3), signal="colour",
            image_filter=image_filter, exclude=exclude, timeout=timeout,
        ):  # fmt: skip
            colour_scores[(h.collection_id, h.image_id)] = h.score
    keys = list(dict.fromkeys([*visual_scores, *colour_scores]))
    if query.ranking != VISUAL:
        await _fill(backend, tenant, model, keys, embedding, visual_scores, "embedding")
        if colour is not None:
            await _fill(backend, tenant, model, keys, colour, colour_scores, "colour")

    def score(key: tuple[str, str]) -> float:
        if query.ranking == VISUAL:
            return visual_scores[key]
        if query.ranking == COLOUR:
            return colour_scores.get(key, 0.0)
        w = query.colour_weight
        return (1 - w) * visual_scores.get(key, 0.0) + w * colour_scores.get(key, 0.0)

    ordered = sorted(keys, key=lambda k: (-score(k), k))
    ordered = [k for k in ordered if score(k) >= query.min_score][query.offset : window]
    rows = await backend.repo.get_images(tenant, ordered)
    # A vector without its row is an ingest still committing; it is left out rather than shown half-made.
    return [
        SearchHit(
            score(k), rows[k], visual_scores.get(k, 0.0), colour_scores.get(k) if query.ranking != VISUAL else None
        )
        for k in ordered
        if k in rows
    ]


async def _fill(
    backend: Backend,
    tenant: str,
    model: str,
    keys: list[tuple[str, str]],
    query: NDArray[np.float32],
    scores: dict[tuple[str, str], float],
    signal: str,
) -> None:
    """Exact scores for candidates the other signal's query found."""
    missing = [k for k in keys if k not in scores]
    if not missing:
        return
    vectors = await backend.vectors.get_vectors(tenant, missing, model=model, signal=signal)
    q = query / (np.linalg.norm(query) or 1.0)
    for key, vector in vectors.items():
        scores[key] = float(np.dot(q, vector / (np.linalg.norm(vector) or 1.0)))
