"""Milvus Lite with a faster search mask (installed by ``deeplens_stack.lite_server``).

Milvus Lite 3.2.2 decides, for every search, which rows of the searched partition count: a row counts if it is
the newest copy of its key across segments and the memtable, and no delete newer than it exists. It decides that
in two Python loops over every row (``_update_max_seqs`` and ``_build_local_mask`` in
``milvus_lite/search/executor_indexed.py``), ~45 % of the engine's search time at 100k rows (docs/benchmarks.md,
eighteenth round). Almost every key appears once and has no delete. Set operations in C find the few keys that
do; only their rows are checked one by one, with the same tests. Rows and their order are unchanged, so every
search returns what the engine's own code returns (``tests/test_lite_search.py`` compares the two).

:func:`install` rewrites that module's source, and only the exact source it was written against (its SHA-256):
any other version of Milvus Lite runs as it is.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
        global_max_seqs,
        [(seg.pks, seg.seqs) for seg in in_scope_segments] + ([(mt_pks, mt_seqs)] if mt_pks else []),
    )
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
            return _deeplens_mask(pks, seqs, filter_mask, global_max_seqs, delta_index, mt_deletes)
        n = len(pks)
        local_mask = np.zeros(n, dtype=bool)
        for i in range(n):
"""


def _positions(pks: Sequence[Any]) -> dict[Any, int]:
    """Each key's row in a source whose keys are unique (built only when some of its keys need a check)."""
    return dict(zip(pks, range(len(pks)), strict=True))


def newest_of_repeated(newest: dict[Any, int], sources: Sequence[tuple[Sequence[Any], NDArray[Any]]]) -> bool:
    """Fills ``newest`` with the highest sequence number of each key found in more than one source (segments and
    the memtable), and returns True; False (``newest`` untouched) when a source repeats a key within itself,
    which the engine never writes, so that the caller falls back to its own loops."""
    seen: set[Any] = set()
    repeated: set[Any] = set()
    for pks, _ in sources:
        keys = set(pks)
        if len(keys) != len(pks):
            return False
        repeated |= seen.intersection(keys)
        seen |= keys
    if repeated:
        for pks, seqs in sources:
            here = repeated.intersection(pks)
            if not here:
                continue
            row = _positions(pks)
            for pk in here:
                seq = int(seqs[row[pk]])
                if newest.get(pk, -1) < seq:
                    newest[pk] = seq
    return True


def valid_rows(
    pks: Sequence[Any],
    seqs: NDArray[Any],
    filter_mask: NDArray[Any] | None,
    newest: Mapping[Any, int],
    delta_index: Any,
    memtable_deletes: Mapping[Any, tuple[int, Any]],
) -> NDArray[np.bool_]:
    """The engine's ``_build_local_mask`` for one source: a row counts unless its key has a newer copy elsewhere
    (``newest`` holds only keys found more than once), a delete newer than it (the delta index, or the memtable's
    deletes not flushed yet), or fails the filter."""
    mask = np.ones(len(pks), dtype=bool)
    suspects = set(newest)
    suspects.update(delta_index.snapshot)
    suspects.update(memtable_deletes)
    here = suspects.intersection(pks)
    if here:
        row = _positions(pks)
        for pk in here:
            i = row[pk]
            seq = int(seqs[i])
            pending = memtable_deletes.get(pk)
            if (
                newest.get(pk, seq) != seq
                or delta_index.is_deleted(pk, seq)
                or (pending is not None and pending[0] > seq)
            ):
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
