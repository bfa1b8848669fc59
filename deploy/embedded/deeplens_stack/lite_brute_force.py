"""Milvus Lite's brute-force search of a segment without copying the segment.

Milvus Lite searches a segment whose index is not built yet (every new segment, until its background worker gets to
it; after a bulk load, a merged segment of up to 200k rows for minutes) and its in-memory table by brute force.
Its ``BruteForceIndex.search`` copies the rows the mask lets through, then divides that copy by its norms into a
second copy: two copies of the tenant's whole segment for every search (512 MB each at 100k 1280-d rows), which
took 285 ms for one query on one thread at 100k rows here, against 20 ms for this module's (bench/lite_brute_force.py).

:func:`search` returns the same neighbours and distances (up to float rounding) for COSINE and IP with one
read of the vectors and no copy: the dot products of every row, divided by the rows' norms (kept per segment), and
the masked-out rows set aside. Where the mask lets through under a quarter of the rows (a small tenant in a large
segment), it copies those rows as the engine does, which reads less. L2 runs the engine's own code.
:func:`install` applies it only to the exact method it was written against (its source's SHA-256).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

_log = logging.getLogger(__name__)

UPSTREAM_SHA256 = "0c3ef22141b5357d9a6da44fa8ce4cf9dd46ebf54c792bfea5895e6476b19af5"
METRICS = ("COSINE", "IP")
CACHED_ROWS = 4096
_cached_norms: dict[int, NDArray[np.float32]] = {}
_upstream: Callable[..., tuple[NDArray[np.int64], NDArray[np.float32]]] | None = None


def _norms(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms: NDArray[np.float32] = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    norms[norms == 0] = 1.0
    return norms


def _segment_norms(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    """The rows' norms, kept while a segment's vectors live (they never change once loaded): half the cost of a
    search of an unindexed segment is reading every row for them."""
    if vectors.shape[0] < CACHED_ROWS:  # the in-memory table's vectors: a new array every search
        return _norms(vectors)
    key = id(vectors)
    norms = _cached_norms.get(key)
    if norms is None:
        norms = _norms(vectors)
        _cached_norms[key] = norms
        weakref.finalize(vectors, _cached_norms.pop, key, None)  # runs when the array dies, before its id is reused
    return norms


def _distances(
    queries: NDArray[np.float32], vectors: NDArray[np.float32], metric: str, norms: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """(nq, n) distances, smaller is closer, as ``milvus_lite.search.distance`` defines them."""
    dots = queries @ vectors.T
    if metric == "IP":
        return -dots
    q_norms = np.linalg.norm(queries, axis=1, keepdims=True)
    q_norms[q_norms == 0] = 1.0
    sims = dots / q_norms / (_norms(vectors) if norms is None else norms)
    distances: NDArray[np.float32] = np.maximum(1.0 - sims, 0.0).astype(np.float32, copy=False)
    return distances


def search(
    index: Any,
    queries: NDArray[Any],
    top_k: int,
    valid_mask: NDArray[np.bool_] | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """``BruteForceIndex.search`` for COSINE and IP without copying the vectors (the engine's for L2)."""
    if index.metric not in METRICS:
        assert _upstream is not None
        return _upstream(index, queries, top_k, valid_mask, params)
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries.reshape(1, -1)
    nq, n = int(queries.shape[0]), int(index.num_vectors)
    ids = np.full((nq, top_k), -1, dtype=np.int64)
    dists = np.full((nq, top_k), np.inf, dtype=np.float32)
    if n == 0 or top_k <= 0:
        return ids, dists
    if valid_mask is not None and valid_mask.shape[0] != n:
        raise ValueError(f"valid_mask length {valid_mask.shape[0]} != num_vectors {n}")
    vectors: NDArray[np.float32] = index._vectors
    norms = _segment_norms(vectors) if index.metric == "COSINE" else None
    rows: NDArray[np.int64] | None = None  # which row each column of ``found`` is; None: all, in order
    if valid_mask is not None:
        rows = np.flatnonzero(valid_mask).astype(np.int64)
        if rows.size == 0:
            return ids, dists
        if rows.size * 4 < n:  # the segment's kept norms serve the copy too
            found = _distances(queries, vectors[rows], index.metric, None if norms is None else norms[rows])
        else:
            found = _distances(queries, vectors, index.metric, norms)[:, rows]
    else:
        found = _distances(queries, vectors, index.metric, norms)
    candidates = found.shape[1]
    k = min(top_k, candidates)
    for q in range(nq):
        row = found[q]
        if k < candidates:
            part = np.argpartition(row, k - 1)[:k]
            order = part[np.argsort(row[part], kind="stable")]
        else:
            order = np.argsort(row, kind="stable")
        ids[q, :k] = order if rows is None else rows[order]
        dists[q, :k] = row[order]
    return ids, dists


def install() -> bool:
    """Makes Milvus Lite's brute-force search use :func:`search`; False (nothing changed) for an engine whose
    method differs from the one this was written against."""
    global _upstream
    from milvus_lite.index.brute_force import BruteForceIndex

    method = BruteForceIndex.search
    if method is search:
        return True
    source = inspect.getsource(method)
    if hashlib.sha256(source.encode()).hexdigest() != UPSTREAM_SHA256:
        _log.warning("Milvus Lite's brute-force search is not the one lite_brute_force knows; it runs unchanged")
        return False
    _upstream = method
    BruteForceIndex.search = search
    return True
