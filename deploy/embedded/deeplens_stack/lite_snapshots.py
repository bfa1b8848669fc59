"""Milvus Lite's reads without waiting for its compactions.

Milvus Lite takes each read's snapshot (its segments and tombstones) under the lock its background worker holds
while it merges a partition's segments: reading, deduplicating and writing up to 100k rows, then loading the merged
segment. Every search waits for all of that. Right after a 100k bulk load, search threads spent ~12 s of a 40 s
window waiting there, and single searches took up to 6.4 s (docs/benchmarks.md, nineteenth round).

:func:`install` gives reads a lock of their own, held only around what a read must not see half done, so that
every read still sees what the engine's own lock showed it:

- the segment cache is replaced in one assignment once the new segments are loaded, not changed in place: a read
  sees the segments before a merge or after it, never both (a row twice) or neither;
- tombstone GC, which the engine runs right after a partition's merge and before the cache is refreshed, runs
  right after the refresh, in the same hold of the read lock: a read sees old segments with old tombstones, or new
  with new (a deleted row never comes back);
- a read waits while a flush moves the in-memory table into a segment, as it waited on the engine's lock before
  (the engine swaps the table out before taking that lock, so its rows would be in neither place);
- a read that a flush overtook is read again. The engine's reads take their snapshot of the segments first and
  read the in-memory table after it: a flush that starts between the two leaves them the old segments and the new,
  empty table, and the flushed rows in neither (a search missing rows that were written before it began). Each
  flush counts itself before it swaps the table; a read that sees the count move while it ran is done again, and
  after a few tries it holds flushes back for its last try.

Each replaced method must have the source it was written against (SHA-256), or nothing changes.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

_log = logging.getLogger(__name__)

UPSTREAM_SHA256 = {
    "Collection._read_snapshot": "65d49ecba774afc8df7c1864fcd81a868b9e6470b64c8505dc6370484a1b1301",
    "Collection._refresh_segment_cache": "7fa6532f005c8c06eacd41a00ce9557ff9312428bbda273c5cccde69f50206ab",
    "Collection._trigger_flush": "5fc94e08aebde198f40363f5e3dc4ecc7bd67c50a9092e6f70eb7bbc5a0350ff",
    "CompactionManager._gc_tombstones": "5e88fbc51dd884eeed8f3f6a1e265e6269e08461675c492503a905cfa913c956",
}
_STATE = "_deeplens_snapshots"
_PENDING_GC = "_deeplens_pending_gc"
_creating = threading.Lock()


# The engine's reads that take a snapshot of the segments and then read the in-memory table.
READS = ("search", "query", "get", "_num_entities")
# Reads overtaken by a flush this many times in a row hold flushes back for their next try.
READ_TRIES = 3


class _Snapshots:
    """A collection's read lock; how many flushes are moving its in-memory table, and how many have started; how
    many reads are holding flushes back."""

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.RLock())
        self.flushing = 0
        self.flushes = 0
        self.holding = 0


def _state(collection: Any) -> _Snapshots:
    state: _Snapshots | None = collection.__dict__.get(_STATE)
    if state is None:
        with _creating:
            state = collection.__dict__.setdefault(_STATE, _Snapshots())
    return state


def read_snapshot(self: Any) -> tuple[tuple[Any, ...], Any]:
    """The segments and a frozen copy of the tombstones, consistent with each other and with the flushes done."""
    state = _state(self)
    with state.changed:
        state.changed.wait_for(lambda: state.flushing == 0)
        return tuple(self._segment_cache.values()), self._delta_index.frozen_copy()


def _refresh_segment_cache(upstream_gc: Callable[..., int]) -> Callable[[Any], None]:
    from milvus_lite.storage.segment import Segment

    def refresh_segment_cache(self: Any) -> None:
        """The engine's refresh (the cache follows the manifest's data files, loaded ones kept, in the same order),
        built aside and swapped in at once, then the tombstone GC a merge left pending."""
        cache = self._segment_cache
        wanted: list[tuple[tuple[str, str], str]] = []
        for partition, rels in self._manifest.get_all_data_files().items():
            for rel in rels:
                wanted.append(((partition, rel), os.path.join(self._data_dir, "partitions", partition, rel)))
        keys = {key for key, _ in wanted}
        fresh = {key: segment for key, segment in cache.items() if key in keys}
        for key, path in wanted:
            if key in fresh or not os.path.exists(path):
                continue
            fresh[key] = Segment.load(
                file_path=path, partition=key[0], pk_field=self._pk_name, vector_field=self._vector_name
            )
        with _state(self).changed:
            self._segment_cache = fresh
            manager = getattr(self, "_compaction_mgr", None)  # not yet while the collection opens
            pending = None if manager is None else manager.__dict__.pop(_PENDING_GC, None)
            if pending is not None:
                upstream_gc(manager, *pending)

    return refresh_segment_cache


def defer_gc(self: Any, manifest: Any, delta_index: Any) -> int:
    """Compaction's tombstone GC, left for the segment cache's refresh that follows the merge."""
    self.__dict__[_PENDING_GC] = (manifest, delta_index)
    return 0


def _waited_for(flush: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(flush)
    def trigger_flush(self: Any) -> None:
        state = _state(self)
        with state.changed:
            state.changed.wait_for(lambda: state.holding == 0)
            state.flushing += 1
            state.flushes += 1
        try:
            flush(self)
        finally:
            with state.changed:
                state.flushing -= 1
                state.changed.notify_all()

    trigger_flush.__deeplens_snapshots__ = True  # type: ignore[attr-defined]
    return trigger_flush


def _unflushed(read: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(read)
    def consistent_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = _state(self)
        for _ in range(READ_TRIES):
            began = state.flushes
            result = read(self, *args, **kwargs)
            if state.flushes == began:  # no flush started while it ran: its segments and table go together
                return result
        with state.changed:  # a flush already under way goes on; the read's snapshot waits for it
            state.holding += 1
        try:
            return read(self, *args, **kwargs)
        finally:
            with state.changed:
                state.holding -= 1
                state.changed.notify_all()

    return consistent_read


def _matches(name: str, method: Any) -> bool:
    return hashlib.sha256(inspect.getsource(method).encode()).hexdigest() == UPSTREAM_SHA256[name]


def install() -> bool:
    """Gives Milvus Lite's reads their own lock (idempotent); False (nothing changed) for an engine whose methods
    differ from the ones this was written against."""
    from milvus_lite.engine.collection import Collection
    from milvus_lite.engine.compaction import CompactionManager

    if getattr(Collection._trigger_flush, "__deeplens_snapshots__", False):
        return True
    methods = {
        "Collection._read_snapshot": Collection._read_snapshot,
        "Collection._refresh_segment_cache": Collection._refresh_segment_cache,
        "Collection._trigger_flush": Collection._trigger_flush,
        "CompactionManager._gc_tombstones": CompactionManager._gc_tombstones,
    }
    if not all(_matches(name, method) for name, method in methods.items()):
        _log.warning("Milvus Lite's snapshot methods are not the ones lite_snapshots knows; reads wait as before")
        return False
    upstream_gc = CompactionManager._gc_tombstones
    CompactionManager._gc_tombstones = defer_gc
    Collection._refresh_segment_cache = _refresh_segment_cache(upstream_gc)
    Collection._read_snapshot = read_snapshot
    Collection._trigger_flush = _waited_for(Collection._trigger_flush)
    for name in READS:
        setattr(Collection, name, _unflushed(getattr(Collection, name)))
    return True
