"""Milvus Lite's background worker builds graphs on half the cores' OpenMP threads (deeplens_stack.lite_background),
and searches on other threads keep theirs."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
import pytest
from deeplens_stack import lite_background
from milvus_lite.engine.collection import Collection

from tests.lite_engine import lite_collection

DIM = 16


def test_the_background_worker_asks_for_half_the_cores_and_still_builds_graphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Collection, "_bg_compact_and_index", Collection._bg_compact_and_index)  # undone after
    lite_background.install()
    lite_background.install()  # idempotent: wrapped once
    assert not getattr(Collection._bg_compact_and_index.__wrapped__, "__deeplens_background_threads__", False)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    try:
        _build_and_check(tmp_path)
    finally:
        faiss.omp_set_num_threads(before)


def _build_and_check(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    with lite_collection(tmp_path / "lite", DIM) as coll:
        coll.insert(
            [
                {"pk": f"k{i}", "tenant_key": 1, "vector": v}
                for i, v in enumerate(rng.standard_normal((300, DIM)).tolist())
            ]
        )
        coll.flush()  # hands the new segment to the background worker
        coll._wait_for_bg()
        cores = len(os.sched_getaffinity(0))
        assert 1 <= lite_background.BACKGROUND_THREADS < max(2, cores)  # leaves searches a core at least
        assert coll._bg_executor.submit(faiss.omp_get_max_threads).result() == lite_background.BACKGROUND_THREADS
        assert faiss.omp_get_max_threads() == 3  # this thread's setting is its own
        segments = list(coll._segment_cache.values())
        assert segments
        assert all(seg.indexes.get("vector") is not None for seg in segments)
        hits = coll.search(rng.standard_normal((1, DIM)).tolist(), top_k=5)
        assert len(hits[0]) == 5
