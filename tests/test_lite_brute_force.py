"""deeplens_stack.lite_brute_force finds what Milvus Lite's own brute-force search finds, at the same distances, for
every metric, mask and size of request, without copying a segment's vectors."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
from deeplens_stack import lite_brute_force
from milvus_lite.index.brute_force import BruteForceIndex
from milvus_lite.search.distance import compute_distances
from numpy.typing import NDArray

ENGINE = BruteForceIndex.search
Hits = tuple[NDArray[np.int64], NDArray[np.float32]]


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BruteForceIndex, "search", ENGINE)  # undone after the test
    monkeypatch.setattr(lite_brute_force, "_upstream", None)
    assert lite_brute_force.install()
    assert lite_brute_force.install()  # idempotent
    assert BruteForceIndex.search is lite_brute_force.search


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("metric", ["COSINE", "IP", "L2"])
@pytest.mark.parametrize("rows", [50, 6000])  # the in-memory table's size, and a segment's (its norms are kept)
def test_same_neighbours_and_distances_as_the_engine(metric: str, rows: int) -> None:
    rng = np.random.default_rng(rows)
    vectors = rng.standard_normal((rows, 16)).astype(np.float32)
    vectors[3] = 0.0  # a zero vector: the engine treats its norm as 1
    index = BruteForceIndex(vectors, metric)
    masks = {
        "none": None,
        "dense": rng.random(rows) < 0.9,
        "sparse": rng.random(rows) < 0.05,  # under a quarter: the rows are gathered first
        "one row": np.eye(1, rows, 7, dtype=bool)[0],
        "empty": np.zeros(rows, dtype=bool),
    }
    for queries in (rng.standard_normal(16).astype(np.float32), rng.standard_normal((3, 16))):
        for name, mask in masks.items():
            for top_k in (1, 10, rows + 5):
                ours = index.search(queries, top_k, valid_mask=mask)
                theirs = ENGINE(index, queries, top_k, valid_mask=mask)
                assert ours[0].shape == (np.atleast_2d(queries).shape[0], top_k)
                _assert_same(index, queries, mask, ours, theirs, f"{metric} {name} k={top_k}")


def _assert_same(index: BruteForceIndex, queries: NDArray[Any], mask: NDArray[np.bool_] | None, ours: Hits,
                 theirs: Hits, case: str) -> None:  # fmt: skip
    """The same hits at the same distances, position by position; two rows may swap only where their distances
    tie to float rounding (the engine's matrix-vector product and this matrix product round differently)."""
    (ids, dists), (their_ids, their_dists) = ours, theirs
    assert ids.shape == their_ids.shape, case
    assert ids.dtype == np.int64, case
    assert dists.dtype == np.float32, case
    np.testing.assert_array_equal(ids < 0, their_ids < 0, err_msg=case)
    np.testing.assert_allclose(dists, their_dists, rtol=1e-5, atol=1e-5, err_msg=case)
    every = compute_distances(np.atleast_2d(queries).astype(np.float32), index._vectors, index.metric)
    allowed = set(range(index.num_vectors)) if mask is None else set(np.flatnonzero(mask).tolist())
    for q in range(ids.shape[0]):
        hits = ids[q][ids[q] >= 0]
        assert len(set(hits.tolist())) == len(hits), case
        assert set(hits.tolist()) <= allowed, case
        np.testing.assert_allclose(every[q][hits], dists[q][: len(hits)], rtol=1e-5, atol=1e-5, err_msg=case)
        swapped = np.flatnonzero(hits != their_ids[q][: len(hits)])
        assert len(swapped) <= max(2, len(hits) // 100), case  # ties only, not a different ranking


@pytest.mark.usefixtures("installed")
def test_kept_norms_go_with_their_segment() -> None:
    vectors = np.random.default_rng(1).standard_normal((lite_brute_force.CACHED_ROWS, 8)).astype(np.float32)
    index = BruteForceIndex(vectors, "COSINE")
    key = id(vectors)
    index.search(vectors[:2], 5)
    assert key in lite_brute_force._cached_norms
    del index, vectors
    gc.collect()
    assert key not in lite_brute_force._cached_norms


def test_an_unknown_engine_method_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BruteForceIndex, "search", ENGINE)
    monkeypatch.setattr(lite_brute_force, "UPSTREAM_SHA256", "0" * 64)
    assert lite_brute_force.install() is False
    assert BruteForceIndex.search is ENGINE


def test_a_mask_of_the_wrong_length_is_refused(installed: None) -> None:
    index = BruteForceIndex(np.ones((4, 2), dtype=np.float32), "COSINE")
    with pytest.raises(ValueError, match="valid_mask length"):
        index.search(np.ones(2, dtype=np.float32), 2, valid_mask=np.ones(3, dtype=bool))
