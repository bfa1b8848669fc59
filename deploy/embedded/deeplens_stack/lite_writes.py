"""Milvus Lite's writes to a collection, one at a time.

Milvus Lite's gRPC server runs each request on a thread of its pool, but its engine takes one writer per collection
(its own server module says so: "concurrent writes against the same Collection are not" safe). Two inserts at once
can take the same sequence numbers, and an insert that runs while another write flushes the in-memory table can
land in the table being written out: its rows are acknowledged and lost. DeepLens writes from the server and from
every worker process at once, and the embedded stack flushes every few rows, so this is not rare: six threads of
2-row upserts lost a third of 2,400 rows (``tests/test_lite_writes.py``). :func:`install` makes every write of a
collection (insert, upsert, delete, flush, dropping a partition, closing) hold that collection's lock.

Reads are left concurrent, as the engine allows: they take a snapshot of the in-memory table and the segments.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

WRITES = ("insert", "upsert", "delete", "flush", "drop_partition", "close")
_LOCK_ATTRIBUTE = "_deeplens_write_lock"
_creating = threading.Lock()


def write_lock(collection: Any) -> threading.RLock:
    """The collection's write lock (re-entrant: an upsert inserts, an insert may flush)."""
    lock: threading.RLock | None = collection.__dict__.get(_LOCK_ATTRIBUTE)
    if lock is None:
        with _creating:
            lock = collection.__dict__.setdefault(_LOCK_ATTRIBUTE, threading.RLock())
    return lock


def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        with write_lock(self):
            return method(self, *args, **kwargs)

    write.__deeplens_serialized__ = True  # type: ignore[attr-defined]
    return write


def install() -> None:
    """Makes every Milvus Lite collection in this process take its writes one at a time (idempotent)."""
    from milvus_lite.engine.collection import Collection

    for name in WRITES:
        method = getattr(Collection, name)
        if not getattr(method, "__deeplens_serialized__", False):
            setattr(Collection, name, _serialized(method))
