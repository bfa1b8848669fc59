"""Concurrent writers to one Milvus Lite collection keep every row once deeplens_stack.lite_writes is installed.

Without it the engine loses acknowledged rows: loads like this one (six threads of 2-row upserts, a 32 KB in-memory
table as the embedded stack runs it, a short thread switch interval) lost 2 to 820 of 1,800-2,400 rows in eight of
nine runs here (or brought deleted rows back), and every run had upserts fail with "current_seq is monotonic"."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deeplens_stack import lite_writes
from milvus_lite.engine import collection as engine

from tests.lite_engine import lite_collection

DIM = 1280  # efficientnet_lite0's embeddings: a 32 KB table flushes every few rows, as in the stack
THREADS, ROWS, BATCH = 6, 300, 2


@pytest.fixture
def serialized(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in lite_writes.WRITES:  # undone after the test
        monkeypatch.setattr(engine.Collection, name, getattr(engine.Collection, name))
    lite_writes.install()
    lite_writes.install()  # idempotent: one lock, not two wrappers


@pytest.fixture
def lite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(engine, "MEMTABLE_MEMORY_LIMIT", 32 * 1024)
    with lite_collection(tmp_path / "lite", DIM, partition_key=True) as coll:
        yield coll


@pytest.fixture
def busy_switching() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads interleave often, as the server's 64 request threads do under load
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("serialized", "busy_switching")
def test_concurrent_upserts_and_deletes_keep_exactly_the_rows_written(lite: Any) -> None:
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        rng = np.random.default_rng(t)
        for i in range(0, ROWS, BATCH):
            batch = [f"t{t}-{k}" for k in range(i, i + BATCH)]
            rows = [{"pk": pk, "tenant_key": t % 3, "vector": rng.standard_normal(DIM).tolist()} for pk in batch]
            try:
                lite.upsert(rows)
                if i % 50 == 0:
                    lite.delete([batch[0]])  # a delete now and then, as re-ingest and removal do
            except Exception as exc:  # reported below; the writer goes on, as the server would
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    expected = {f"t{t}-{k}" for t in range(THREADS) for k in range(ROWS) if k % 50 != 0}
    found = [row["pk"] for row in lite.query(expr="tenant_key >= 0", output_fields=["pk"])]
    assert len(found) == len(set(found))
    assert len(expected - set(found)) == 0, "acknowledged rows were lost"
    assert set(found) == expected
    assert errors == []


def test_the_lock_is_per_collection_and_reentrant(lite: Any, serialized: None) -> None:
    lock = lite_writes.write_lock(lite)
    assert lite_writes.write_lock(lite) is lock
    with lock:  # a write from inside a write (an upsert inserts; an insert flushes) does not deadlock
        lite.upsert([{"pk": "a", "tenant_key": 1, "vector": [0.5] * DIM}])
        lite.flush()
    assert [row["pk"] for row in lite.query(expr="tenant_key == 1", output_fields=["pk"])] == ["a"]
