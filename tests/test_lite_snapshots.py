"""With deeplens_stack.lite_snapshots, Milvus Lite's reads do not wait for a merge of segments, still wait for a
flush of the in-memory table, are read again when a flush overtakes them, and see exactly the live rows while real
merges and tombstone GC run beside them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deeplens_stack import lite_snapshots
from milvus_lite.engine import collection as engine
from milvus_lite.engine.compaction import CompactionManager

from tests.lite_engine import lite_collection

DIM = 32
REPLACED = ("_read_snapshot", "_refresh_segment_cache", "_trigger_flush", *lite_snapshots.READS)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REPLACED:  # undone after the test
        monkeypatch.setattr(engine.Collection, name, getattr(engine.Collection, name))
    monkeypatch.setattr(CompactionManager, "_gc_tombstones", CompactionManager._gc_tombstones)
    assert lite_snapshots.install()
    assert lite_snapshots.install()  # idempotent


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Any]:
    with lite_collection(tmp_path / "lite", DIM) as coll:
        yield coll


def _rows(keys: list[str], seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"pk": k, "tenant_key": 1, "vector": rng.standard_normal(DIM).tolist()} for k in keys]


def _live(lite: Any) -> list[str]:
    return [row["pk"] for row in lite.query(expr="tenant_key == 1", output_fields=["pk"])]


def _in_thread(target: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.usefixtures("installed")
def test_reads_do_not_wait_for_a_merge(lite: Any) -> None:
    lite.insert(_rows([f"r{k}" for k in range(20)], 1))
    lite.flush()
    with lite._maintenance_lock:  # what the background worker holds while it merges segments
        reader, found = _in_thread(
            lambda: (sorted(_live(lite)), len(lite.search([[0.1] * DIM], top_k=5, expr="tenant_key == 1")[0]))
        )
        reader.join(timeout=20)
        alive = reader.is_alive()
    assert not alive, "a read waited for the merge's lock"
    assert found == [(sorted(f"r{k}" for k in range(20)), 5)]


@pytest.mark.usefixtures("installed")
def test_a_read_during_a_flush_waits_and_sees_every_row(lite: Any) -> None:
    lite.insert(_rows([f"r{k}" for k in range(30)], 2))  # in the in-memory table only
    table = lite._memtable
    lite._maintenance_lock.acquire()
    try:
        flusher, _ = _in_thread(lite.flush)
        deadline = time.monotonic() + 20
        while lite._memtable is table:  # the flush has swapped the table out, and waits for the lock
            assert time.monotonic() < deadline
            time.sleep(0.01)
        reader, found = _in_thread(lambda: sorted(_live(lite)))
        reader.join(timeout=0.5)
        waited = reader.is_alive()
    finally:
        lite._maintenance_lock.release()
    flusher.join(timeout=20)
    reader.join(timeout=20)
    assert waited, "a read went on while the flush held rows in neither place"
    assert found == [sorted(f"r{k}" for k in range(30))]


def _searched(lite: Any) -> list[str]:
    return sorted(h["id"] for h in lite.search([[0.1] * DIM], top_k=100, expr="tenant_key == 1")[0])


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("read", [_live, _searched], ids=["query", "search"])
def test_a_read_that_a_flush_overtakes_is_read_again(lite: Any, monkeypatch: pytest.MonkeyPatch, read: Any) -> None:
    """The flush runs right after the read's snapshot of the segments, before the read looks at the in-memory
    table: read once, the flushed rows would be in neither."""
    lite.insert(_rows([f"r{k}" for k in range(30)], 3))  # in the in-memory table only
    snapshot = engine.Collection._read_snapshot
    overtaken: list[int] = []

    def then_a_flush(self: Any) -> Any:
        taken = snapshot(self)
        if not overtaken:
            overtaken.append(1)
            flusher, _ = _in_thread(self.flush)
            flusher.join(timeout=20)
            assert not flusher.is_alive()
        return taken

    monkeypatch.setattr(engine.Collection, "_read_snapshot", then_a_flush)
    assert sorted(read(lite)) == sorted(f"r{k}" for k in range(30))
    assert overtaken, "no flush overtook the read"


@pytest.mark.usefixtures("installed")
def test_a_read_overtaken_again_and_again_holds_flushes_back_for_its_last_try(
    lite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = engine.Collection._read_snapshot
    tries: list[bool] = []  # per try: whether a flush could run after its snapshot

    def then_a_flush(self: Any) -> Any:
        taken = snapshot(self)
        self.insert(_rows([f"t{len(tries)}"], 10 + len(tries)))  # something for the flush to move
        flusher, _ = _in_thread(self.flush)
        flusher.join(timeout=0.5 if len(tries) == lite_snapshots.READ_TRIES else 20)
        tries.append(not flusher.is_alive())
        return taken

    lite.insert(_rows([f"r{k}" for k in range(10)], 4))
    monkeypatch.setattr(engine.Collection, "_read_snapshot", then_a_flush)
    found = _live(lite)
    assert tries == [True] * lite_snapshots.READ_TRIES + [False]  # the last try's flush waited for it
    # Every row written before the last try began, and none twice; the last try's own row may or may not be seen.
    before = {f"r{k}" for k in range(10)} | {f"t{i}" for i in range(lite_snapshots.READ_TRIES)}
    assert before <= set(found) <= before | {f"t{lite_snapshots.READ_TRIES}"}
    assert len(found) == len(set(found))
    monkeypatch.setattr(engine.Collection, "_read_snapshot", snapshot)
    deadline = time.monotonic() + 20
    while lite._memtable.size() and time.monotonic() < deadline:  # the held-back flush ran once the read ended
        time.sleep(0.01)
    assert lite._memtable.size() == 0


@pytest.mark.usefixtures("installed")
def test_reads_beside_merges_and_tombstone_gc_see_exactly_the_live_rows(lite: Any) -> None:
    keys = [f"k{k}" for k in range(120)]
    lite._maintenance_lock.acquire()  # the background merges wait until the readers run
    try:
        for i in range(0, 120, 10):  # many small segments ...
            lite.insert(_rows(keys[i : i + 10], i))
            lite.flush()
        lite.delete(keys[:40])  # ... tombstones ...
        lite.flush()
        for i in range(40, 120, 10):  # ... and every older copy superseded, so the merges let GC drop them
            lite.upsert(_rows(keys[i : i + 10], 1000 + i))
            lite.flush()
        segments_before = len(lite._segment_cache)
        tombstones_before = len(lite._delta_index.snapshot)
    finally:
        expected = sorted(keys[40:])
        wrong: list[tuple[int, int]] = []
        reads = [0]
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                found = _live(lite)
                reads[0] += 1
                if sorted(found) != expected:
                    wrong.append((len(found), len(set(found))))

        readers = [threading.Thread(target=read, daemon=True) for _ in range(3)]
        for reader in readers:
            reader.start()
        time.sleep(0.2)
        lite._maintenance_lock.release()
    lite._wait_for_bg()
    time.sleep(0.2)
    stop.set()
    for reader in readers:
        reader.join()
    assert len(lite._segment_cache) < segments_before, "no merge ran"
    assert len(lite._delta_index.snapshot) < tombstones_before, "no tombstone was collected"
    assert reads[0] > 20
    assert wrong == []
