"""Milvus Lite searching with deeplens_stack.lite_search's row mask returns what the engine's own code returns, on
a real Milvus Lite collection with keys copied across segments and the memtable, deletes flushed and not, with
and without a filter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deeplens_stack import lite_search
from milvus_lite.engine import collection as engine
from milvus_lite.search import executor_indexed

from tests.lite_engine import lite_collection

DIM = 8


def _rows(rng: np.random.Generator, keys: range | list[int]) -> list[dict[str, Any]]:
    return [{"pk": f"r{k}", "tenant_key": k % 2, "vector": rng.standard_normal(DIM).tolist()} for k in keys]


@pytest.fixture
def lite(tmp_path: Path) -> Any:
    with lite_collection(tmp_path / "lite", DIM) as coll:
        yield coll


def test_searches_return_what_the_engines_own_mask_returns(lite: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = lite_search.faster_search()
    assert fast is not None, "the installed Milvus Lite is not the version lite_search was written against"
    rng = np.random.default_rng(20261125)
    lite.insert(_rows(rng, range(300)))
    lite.flush()
    lite.upsert(_rows(rng, range(0, 120, 2)))  # newer copies of 60 keys in a second segment
    lite.flush()
    lite.delete([f"r{k}" for k in [*range(1, 40, 2), *range(0, 40, 2)]])  # 20 copied once, 20 copied twice
    lite.flush()
    lite.insert(_rows(rng, range(300, 350)))  # the memtable: new keys, newer copies, deletes not flushed
    lite.upsert(_rows(rng, range(200, 210)))
    lite.delete([f"r{k}" for k in range(250, 260)])
    # The background worker indexes flushed segments; both searches must see the same indexes (brute force is exact,
    # HNSW is not), so it is done before they run.
    lite._wait_for_bg()

    repeated: list[bool] = []

    def newest(*args: Any) -> bool:
        fast_path = lite_search.newest_of_repeated(*args)
        repeated.append(fast_path and bool(args[0]))
        return fast_path

    queries = rng.standard_normal((12, DIM)).tolist()

    def compare() -> None:
        for expr in (None, "tenant_key == 1"):
            for top_k in (10, 400):
                monkeypatch.setattr(engine, "execute_search_with_index", executor_indexed.execute_search_with_index)
                theirs = lite.search(queries, top_k=top_k, expr=expr, output_fields=["tenant_key"])
                monkeypatch.setattr(engine, "execute_search_with_index", fast)
                monkeypatch.setitem(fast.__globals__, "_deeplens_newest", newest)
                ours = lite.search(queries, top_k=top_k, expr=expr, output_fields=["tenant_key"])
                assert [[h["id"] for h in q] for q in ours] == [[h["id"] for h in q] for q in theirs]
                assert [[h["entity"] for h in q] for q in ours] == [[h["entity"] for h in q] for q in theirs]
                for mine, engines in zip(ours, theirs, strict=True):
                    assert [h["distance"] for h in mine] == pytest.approx([h["distance"] for h in engines], abs=1e-6)

    compare()
    assert repeated  # the fast path ran ...
    assert all(repeated)  # ... each time with keys found in more than one place
    everything = {h["id"] for h in lite.search(queries[:1], top_k=400, search_params={"ef": 2000})[0]}
    deleted = {f"r{k}" for k in [*range(40), *range(250, 260)]}
    assert not everything & deleted
    assert len(everything) == 350 - len(deleted)

    # New segments: what was kept about the old ones must not answer for them.
    lite.flush()
    lite.upsert(_rows(rng, range(100, 160)))  # newer copies again, of keys in one, two or three segments
    lite.flush()
    lite.upsert(_rows(rng, range(150, 155)))  # and in the memtable
    lite._wait_for_bg()
    compare()


def test_an_unknown_engine_source_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lite_search, "UPSTREAM_SHA256", "0" * 64)
    before = engine.execute_search_with_index
    assert lite_search.install() is False
    assert engine.execute_search_with_index is before


def test_repeated_keys_and_deletes_are_found_like_the_engines_loops() -> None:
    """The helpers against the engine's per-row rules written out, on random sources."""
    rng = np.random.default_rng(7)

    class Deletes:
        def __init__(self, seqs: dict[str, int]) -> None:
            self.snapshot = seqs

        def is_deleted(self, pk: str, seq: int) -> bool:
            return self.snapshot.get(pk, -1) > seq

    for _ in range(50):
        sources = []
        for _ in range(int(rng.integers(1, 5))):
            keys = rng.choice(400, size=int(rng.integers(0, 120)), replace=False)
            sources.append(([f"k{k}" for k in keys], rng.integers(0, 1000, size=len(keys)).astype(np.uint64)))
        segments = [_Segment(pks, seqs) for pks, seqs in sources]
        memtable = None
        if rng.random() < 0.5:  # the last source is the in-memory table
            memtable = sources[-1]
            segments.pop()
        flushed = Deletes({f"k{k}": int(rng.integers(0, 1000)) for k in rng.choice(400, 40)})
        pending = {f"k{k}": (int(rng.integers(0, 1000)), "_default") for k in rng.choice(400, 20)}
        newest_all: dict[str, int] = {}
        for pks, seqs in sources:
            for pk, seq in zip(pks, seqs.tolist(), strict=True):
                newest_all[pk] = max(newest_all.get(pk, -1), int(seq))
        newest: dict[str, int] = {}
        assert lite_search.newest_of_repeated(newest, segments, memtable)
        assert lite_search.newest_of_repeated(second := {}, segments, memtable)  # kept: the same answer
        assert second == newest
        rows_of = {id(seg.seqs): seg.pk_to_row for seg in segments}
        for pks, seqs in sources:
            expected = np.array(
                [
                    newest_all[pk] == seq
                    and not flushed.is_deleted(pk, seq)
                    and not (pk in pending and pending[pk][0] > seq)
                    for pk, seq in zip(pks, seqs.tolist(), strict=True)
                ],
                dtype=bool,
            )
            filter_mask = rng.random(len(pks)) < 0.7
            for rows in (None, rows_of.get(id(seqs))):
                got = lite_search.valid_rows(pks, seqs, filter_mask, newest, flushed, pending, rows)
                assert got.tolist() == (expected & filter_mask).tolist()
    twice = (["a", "a"], np.array([1, 2], dtype=np.uint64))
    assert not lite_search.newest_of_repeated({}, [_Segment(*twice)], None)
    assert not lite_search.newest_of_repeated({}, [], twice)


class _Segment:
    def __init__(self, pks: list[str], seqs: np.ndarray) -> None:
        self.pks = pks
        self.seqs = seqs
        self.pk_to_row = {pk: i for i, pk in enumerate(pks)}


def test_what_segments_share_is_worked_out_once_per_set_of_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    worked_out: list[int] = []
    among = lite_search._repeats_among

    def counted(segments: Any) -> Any:
        worked_out.append(len(segments))
        return among(segments)

    monkeypatch.setattr(lite_search, "_repeats_among", counted)
    a = _Segment(["x", "y"], np.array([1, 2], dtype=np.uint64))
    b = _Segment(["y", "z"], np.array([3, 4], dtype=np.uint64))
    for _ in range(3):
        newest: dict[str, int] = {}
        assert lite_search.newest_of_repeated(newest, [a, b], (["z", "w"], np.array([9, 8], dtype=np.uint64)))
        assert newest == {"y": 3, "z": 9}
    assert worked_out == [2]
    c = _Segment(["y"], np.array([7], dtype=np.uint64))  # a merge or a flush: another set of segments
    newest = {}
    assert lite_search.newest_of_repeated(newest, [a, b, c], None)
    assert newest == {"y": 7}
    assert worked_out == [2, 3]
