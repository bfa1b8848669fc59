"""Milvus Lite's background work (merging segments, building their HNSW graphs) on half the cores.

After each flush Milvus Lite's background worker merges small segments and builds the graph of every segment
without one. Graph builds go through FAISS, whose OpenMP team takes every core: after a bulk load of 100k images a
merged segment's graph took ~30 s of both of a two-core machine's cores, while searches, the server and the
inference server waited for them (docs/benchmarks.md, nineteenth and twentieth rounds). :func:`install` makes
that worker's thread ask OpenMP for half the cores this process may use (one of two). OpenMP keeps that setting
per thread, so searches on the gRPC server's threads are left as they are. A graph takes longer to arrive, and
until then its segment is searched by brute force (``deeplens_stack.lite_brute_force``), on the cores left free.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

BACKGROUND_THREADS = max(1, len(os.sched_getaffinity(0)) // 2)


def _on_background_threads(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def background(self: Any, *args: Any, **kwargs: Any) -> Any:
        import faiss

        faiss.omp_set_num_threads(BACKGROUND_THREADS)  # this thread's OpenMP setting only
        return method(self, *args, **kwargs)

    background.__deeplens_background_threads__ = True  # type: ignore[attr-defined]
    return background


def install() -> None:
    """Makes every Milvus Lite collection in this process run its background work on ``BACKGROUND_THREADS`` OpenMP
    threads (idempotent)."""
    from milvus_lite.engine.collection import Collection

    method = Collection._bg_compact_and_index
    if not getattr(method, "__deeplens_background_threads__", False):
        Collection._bg_compact_and_index = _on_background_threads(method)
