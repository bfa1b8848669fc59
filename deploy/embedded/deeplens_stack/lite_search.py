"""Milvus Lite with a faster search mask (installed by ``deeplens_stack.lite_server``).

Milvus Lite 3.2.2 decides, for every search, which rows of the searched partition count: a row counts if it is
the newest copy of its key across segments and the memtable, and no delete newer than it exists. It decides that
in two Python loops over every row (``_update_max_seqs`` and ``_build_local_mask`` in
``milvus_lite/search/executor_indexed.py``), ~45 % of the engine's search time at 100k rows (docs/benchmarks.md,
eighteenth round). Almost every key appears once and has no delete. Set operations in C find the few keys that
do; only their rows are checked one by one, with the same tests. Rows and their order are unchanged, so every
search returns what the engine's own code returns (``tests/test_lite_search.py`` compares the two).

Segments never change once written, so which keys they share is worked out once per set of segments and kept
(:func:`segment_repeats`); a search adds only the in-memory table's keys, looked up in each segment's own key map.

:func:`install` rewrites that module's source, and only the exact source it was written against (its SHA-256):
any other version of Milvus Lite runs as it is.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

_log = logging.getLogger(__name__)

UPSTREAM_SHA256 = "f6709e2113492364f37cdfc267987b1d224b8470c76165cdaef2d549983d66b9"

_DEDUP_LOOPS = """    for seg in in_scope_segments:
        _update_max_seqs(list(seg.pks), seg.seqs)
    if mt_pks:
        _update_max_seqs(mt_pks, mt_seqs)
"""
_DEDUP_FAST = """    _deeplens_fast = _deeplens_newest(
        global_max_seqs, in_scope_segments, (mt_pks, mt_seqs) if mt_pks else None
    )
    _deeplens_rows = {id(seg.seqs): seg.pk_to_row for seg in in_scope_segments}
    if not _deeplens_fast:
        for seg in in_scope_segments:
            _update_max_seqs(list(seg.pks), seg.seqs)
        if mt_pks:
            _update_max_seqs(mt_pks, mt_seqs)
"""
_MASK_HEAD = """        n = len(pks)
        local_mask = np.zeros(n, dtype=bool)
        for i in range(n):
"""
_MASK_FAST = """        if _deeplens_fast:
            return _deeplens_mask(
                pks, seqs, filter_mask, global_max_seqs, delta_index, mt_deletes, _deeplens_rows.get(id(seqs))
            )
        n = len(pks)
        local_mask = np.zeros(n, dtype=bool)
        for i in range(n):
"""


class SegmentKeys(Protocol):
    """What the mask reads of a Milvus Lite ``Segment``: its keys in row order, their sequence numbers, and the
    map from key to row the segment builds when it loads."""

    pks: Sequence[Any]
    seqs: NDArray[Any]
    pk_to_row: Mapping[Any, int]


CACHED_SEGMENT_SETS = 8
_repeats: OrderedDict[tuple[int, ...], tuple[tuple[NDArray[Any], ...], dict[Any, int] | None]] = OrderedDict()
_repeats_lock = threading.Lock()


def _positions(pks: Sequence[Any]) -> dict[Any, int]:
    """Each key's row in a source whose keys are unique (built only when some of its keys need a check)."""
    return dict(zip(pks, range(len(pks)), strict=True))


def _keep_newest(newest: dict[Any, int], pk: Any, seq: int) -> None:
    if newest.get(pk, -1) < seq:
        newest[pk] = seq


def _repeats_among(segments: Sequence[SegmentKeys]) -> dict[Any, int] | None:
    seen: set[Any] = set()
    repeated: set[Any] = set()
    for seg in segments:
        keys = seg.pk_to_row.keys()
        if len(keys) != len(seg.pks):
            return None
        repeated |= keys & seen
        seen |= keys
    newest: dict[Any, int] = {}
    if repeated:
        for seg in segments:
            rows = seg.pk_to_row
            for pk in repeated:
                row = rows.get(pk)
                if row is not None:
                    _keep_newest(newest, pk, int(seg.seqs[row]))
    return newest


def segment_repeats(segments: Sequence[SegmentKeys]) -> dict[Any, int] | None:
    """The highest sequence number of each key found in more than one of ``segments``, or None when a segment
    repeats a key within itself (which the engine never writes). Kept for the last few sets of segments: the
    entry holds the segments' ``seqs`` arrays, so their ids name those segments for as long as it is kept."""
    key = tuple(id(seg.seqs) for seg in segments)
    with _repeats_lock:
        kept = _repeats.get(key)
        if kept is not None:
            _repeats.move_to_end(key)
            return kept[1]
    newest = _repeats_among(segments)
    with _repeats_lock:
        _repeats[key] = (tuple(seg.seqs for seg in segments), newest)
        while len(_repeats) > CACHED_SEGMENT_SETS:
            _repeats.popitem(last=False)
    return newest


def newest_of_repeated(
    newest: dict[Any, int],
    segments: Sequence[SegmentKeys],
    memtable: tuple[Sequence[Any], NDArray[Any]] | None,
) -> bool:
    """Fills ``newest`` with the highest sequence number of each key found in more than one source (the segments
    and the in-memory table), and returns True; False (``newest`` untouched) when a source repeats a key within
    itself, which the engine never writes, so that the caller falls back to its own loops."""
    among_segments = segment_repeats(segments)
    if among_segments is None:
        return False
    found: dict[Any, int] = {}
    if memtable is not None:
        pks, seqs = memtable
        if len(set(pks)) != len(pks):
            return False
        for pk, seq in zip(pks, seqs.tolist(), strict=True):
            copies = [int(seg.seqs[row]) for seg in segments if (row := seg.pk_to_row.get(pk)) is not None]
            if copies:
                found[pk] = max(int(seq), *copies)
    newest.update(among_segments)
    newest.update(found)
    return True


def valid_rows(
    pks: Sequence[Any],
    seqs: NDArray[Any],
    filter_mask: NDArray[Any] | None,
    newest: Mapping[Any, int],
    delta_index: Any,
    memtable_deletes: Mapping[Any, tuple[int, Any]],
    rows: Mapping[Any, int] | None = None,
) -> NDArray[np.bool_]:
    """The engine's ``_build_local_mask`` for one source: a row counts unless its key has a newer copy elsewhere
    (``newest`` holds only keys found more than once), a delete newer than it (the delta index, or the memtable's
    deletes not flushed yet), or fails the filter. ``rows`` is the source's key-to-row map where it has one (a
    segment's), so that only the few suspect keys are looked up, not every row's."""
    mask = np.ones(len(pks), dtype=bool)
    suspects = set(newest)
    suspects.update(delta_index.snapshot)
    suspects.update(memtable_deletes)
    if rows is not None and len(rows) == len(pks) and len(suspects) <= len(pks):
        row = rows
        here: Sequence[Any] | set[Any] = [pk for pk in suspects if pk in rows]
    else:
        here = suspects.intersection(pks)
        row = _positions(pks) if here else {}
    for pk in here:
        i = row[pk]
        seq = int(seqs[i])
        pending = memtable_deletes.get(pk)
        if newest.get(pk, seq) != seq or delta_index.is_deleted(pk, seq) or (pending is not None and pending[0] > seq):
            mask[i] = False
    if filter_mask is not None:
        mask &= filter_mask.astype(bool)
    return mask


def faster_search() -> Callable[..., Any] | None:
    """Milvus Lite's ``execute_search_with_index`` with the two loops replaced, or None if the installed engine's
    source is not the one this was written against."""
    from milvus_lite.search import executor_indexed

    source = inspect.getsource(executor_indexed)
    if hashlib.sha256(source.encode()).hexdigest() != UPSTREAM_SHA256:
        return None
    if source.count(_DEDUP_LOOPS) != 1 or source.count(_MASK_HEAD) != 1:
        return None
    rewritten = source.replace(_DEDUP_LOOPS, _DEDUP_FAST).replace(_MASK_HEAD, _MASK_FAST)
    namespace: dict[str, Any] = {
        "__name__": executor_indexed.__name__,
        "_deeplens_newest": newest_of_repeated,
        "_deeplens_mask": valid_rows,
    }
    exec(compile(rewritten, f"{executor_indexed.__file__} (deeplens_stack.lite_search)", "exec"), namespace)
    search: Callable[..., Any] = namespace["execute_search_with_index"]
    return search


def install() -> bool:
    """Makes Milvus Lite's collections search with :func:`faster_search`; False (nothing changed) for an engine
    whose source differs."""
    from milvus_lite.engine import collection

    search = faster_search()
    if search is None:
        _log.warning("Milvus Lite's search source is not the one lite_search knows; it runs unchanged")
        return False
    collection.execute_search_with_index = search
    return True
