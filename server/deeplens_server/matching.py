"""Duplicate candidates for one image: one ANN query over the tenant's embeddings plus one indexed hash lookup,
so the cost per image stays flat as the library grows (no N x N comparison); then geometric verification of
the few SIMILAR candidates, which tells a crop or a small rotation from another photo of the same scene. Used
at ingest and by FindDuplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import replace

import asyncpg
import numpy as np
from numpy.typing import NDArray

from deeplens_server.backend import Backend
from deeplens_server.duplicate_store import LateMatcher
from deeplens_server.duplicates import SIMILAR, DuplicatePolicy, Fingerprint, Match, match, ranked, verified
from deeplens_server.errors import NotFound
from deeplens_server.filters import NO_FILTER, within
from deeplens_server.keypoints import Keypoints, align, grey_of_bytes, keypoints_of_bytes
from deeplens_server.repository import ImageRecord, hash_neighbours

_log = logging.getLogger(__name__)

DEFAULT_CANDIDATES = 50
MAX_CANDIDATES = 500
# At ingest: the nearest 20 are plenty — groups are transitive, so a copy beyond them still joins through one
# within — and each candidate costs the vector store a row to read back. Measured at 10 (docs/duplicates.md):
# ~10 % faster ingest, but a crop's or a rotation's direct link to its original fell from 0.69 to 0.21.
INGEST_CANDIDATES = 20
# Candidates verified geometrically per query, most similar first: each costs ~0.2 ms of CPU when the first
# descriptor matching rules it out and ~4 ms when its pixels are compared (docs/duplicates.md).
MAX_VERIFIED = 20
# Verification also looks below the SIMILAR threshold, down to this cosine: a heavy watermark or a crop of a
# texture can move the embedding that far while the pixels still align.
VERIFY_MIN_COSINE = 0.6
# The stored thumbnail verification reads (the largest; imaging.THUMBNAIL_SIZES).
VERIFY_THUMBNAIL = 600
# Candidate features kept per process (~0.25 MB each).
RECENT_KEYPOINTS = 128

Key = tuple[str, str]
QueryKeypoints = Callable[[], Keypoints]


async def find_matches(
    backend: Backend,
    tenant_id: str,
    query: Fingerprint,
    embedding: NDArray[np.float32],
    *,
    model: str,
    policy: DuplicatePolicy,
    query_keypoints: QueryKeypoints | None = None,
    collection_id: str | None = None,
    exclude: Key | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    hash_lookup: bool = True,
    timeout: float | None = None,
    examined: set[Key] | None = None,
) -> list[Match]:
    """Every candidate that is at least SIMILAR under ``policy``, strongest first. With ``hash_lookup`` off
    the caller runs the lookup itself (``late_matcher``, at ingest under the tenant's lock). ``embedding`` is
    ``model``'s, and is compared with that model's vectors only. ``examined`` collects the images the hash
    lookup classified (matched or not)."""
    final = policy
    if query_keypoints is not None:
        policy = replace(policy, similar_min_cosine=min(policy.similar_min_cosine, VERIFY_MIN_COSINE))
    hits = await backend.vectors.search(
        tenant_id, embedding, model=model, limit=candidates, image_filter=within(NO_FILTER, collection_id),
        exclude=exclude, timeout=timeout,
    )  # fmt: skip
    found: dict[Key, Match] = {}
    for hit in hits:
        f = hit.fields
        other = Fingerprint(str(f["sha256"]), str(f["phash"]), str(f["dhash"]), str(f["detail"]))
        m = match(policy, query, (hit.collection_id, hit.image_id), other, hit.score)
        if m is not None:
            found[m.key] = m
    if hash_lookup:
        # Copies beyond the ANN's reach — the same bytes, or a close pHash in any orientation (an embedding can
        # move far under rotation or heavy recompression while the hashes stay put).
        records = await backend.repo.hash_neighbours(
            tenant_id, query, collection_id=collection_id, limit=max(candidates, 50)
        )
        extra = [r for r in records if (r.collection_id, r.image_id) not in (exclude, *found)]
        if examined is not None:
            examined.update((r.collection_id, r.image_id) for r in records)
        for m in await _classify(backend, tenant_id, policy, query, (model, embedding), extra):
            found[m.key] = m
    matches = list(found.values())
    if query_keypoints is not None:
        matches = await _verify(backend, tenant_id, final, query_keypoints, matches)
    return ranked([m for m in matches if m.tier != SIMILAR or m.cosine >= final.similar_min_cosine])


def late_matcher(
    backend: Backend,
    tenant_id: str,
    query: Fingerprint,
    embedding: NDArray[np.float32],
    *,
    model: str,
    policy: DuplicatePolicy,
    exclude: Key,
    limit: int = 50,
    examined: AbstractSet[Key] = frozenset(),
) -> LateMatcher:
    """The hash lookup, run inside the transaction that stores the image, after it takes the tenant's lock:
    every image committed before it is visible, and every image committed after it runs its own lookup and
    sees this one — so two copies ingested at the same moment still find each other. Images the lookup
    before the lock already ``examined`` are not classified again: the lock is held only for the SQL query
    (and, for images committed in between, their vectors)."""

    async def late(conn: asyncpg.Connection, known: set[Key]) -> list[Match]:
        records = await hash_neighbours(conn, tenant_id, query, limit=limit)
        extra = [r for r in records if (r.collection_id, r.image_id) not in {*known, *examined, exclude}]
        return await _classify(backend, tenant_id, policy, query, (model, embedding), extra)

    return late


async def _classify(
    backend: Backend,
    tenant_id: str,
    policy: DuplicatePolicy,
    query: Fingerprint,
    embedded: tuple[str, NDArray[np.float32]],
    records: Iterable[ImageRecord],
) -> list[Match]:
    """Matches among ``records`` for the query, whose ``embedded`` is (model, embedding)."""
    records = list(records)
    if not records:
        return []
    model, embedding = embedded
    keys = [(r.collection_id, r.image_id) for r in records]
    vectors = await backend.vectors.get_vectors(tenant_id, keys, model=model)
    found = []
    for record in records:
        key = (record.collection_id, record.image_id)
        vector = vectors.get(key)
        cosine = float(np.dot(embedding, vector)) if vector is not None else 0.0
        m = match(policy, query, key, record.fingerprint, cosine)
        if m is not None:
            found.append(m)
    return found


async def stored_keypoints(backend: Backend, tenant_id: str, sha256: str) -> QueryKeypoints | None:
    """Verification features of indexed content, from its stored thumbnail (None when it has none);
    computed when called (in a thread)."""
    try:
        data = await backend.blobs.get_thumbnail(tenant_id, sha256, VERIFY_THUMBNAIL)
    except NotFound:
        return None
    return lambda: keypoints_of_bytes(data)


class _RecentKeypoints:
    """Features of recently verified candidates, by content: a cluster of look-alikes (a photo session, a
    calibration run) has its members verified against each new arrival. Touched only from the event loop."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], Keypoints] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Keypoints | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[str, str], value: Keypoints) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


_recent = _RecentKeypoints(RECENT_KEYPOINTS)


async def _verify(
    backend: Backend, tenant_id: str, policy: DuplicatePolicy, query: QueryKeypoints, matches: Sequence[Match]
) -> list[Match]:
    """The most similar SIMILAR matches, verified on their stored thumbnails."""
    todo = sorted((m for m in matches if m.tier == SIMILAR), key=lambda m: -m.cosine)[:MAX_VERIFIED]
    if not todo:
        return list(matches)
    known: dict[str, Keypoints] = {}
    thumbs: dict[str, bytes] = {}
    for sha in {m.sha256 for m in todo}:
        cached = _recent.get((tenant_id, sha))
        if cached is not None:
            known[sha] = cached
            continue
        try:  # the features stored at ingest; the pixels are read only if the pair fits well enough
            known[sha] = Keypoints.from_bytes(
                await backend.blobs.get_features(tenant_id, sha), _thumbnail_pixels(backend, tenant_id, sha)
            )
            continue
        except NotFound:
            pass
        except (OSError, ValueError, KeyError):
            _log.warning("unreadable features for %s; computing them from the thumbnail", sha)
        try:  # indexed before features were stored: computed from the thumbnail
            thumbs[sha] = await backend.blobs.get_thumbnail(tenant_id, sha, VERIFY_THUMBNAIL)
        except NotFound:
            _log.warning("no thumbnail for %s; its match stays unverified", sha)
    if not known and not thumbs:
        return list(matches)
    fresh = set(known) | set(thumbs)
    alignments = await asyncio.to_thread(_align_all, query, known, thumbs, policy.keypoint_min_inliers)
    for sha in fresh:
        if sha in known:
            _recent.put((tenant_id, sha), known[sha])
    out = []
    for m in matches:
        if m.sha256 in alignments and m in todo:
            inliers, agreement = alignments[m.sha256]
            m = verified(policy, m, inliers, agreement)
        out.append(m)
    return out


def _align_all(
    query: QueryKeypoints, known: dict[str, Keypoints], thumbs: dict[str, bytes], min_inliers: int
) -> dict[str, tuple[int, float]]:
    """(inliers, agreement) per candidate content (runs in a thread); adds the features it computes to
    ``known``."""
    mine = query()
    for sha, data in thumbs.items():
        try:
            known[sha] = keypoints_of_bytes(data)
        except (OSError, ValueError):
            _log.warning("unreadable thumbnail for %s; its match stays unverified", sha)
    out = {}
    for sha, other in known.items():
        try:
            found = align(mine, other, min_inliers=min_inliers)
        except (OSError, ValueError):  # its thumbnail went missing or does not match its features
            _log.warning("no pixels for %s; its match stays unverified", sha)
            continue
        out[sha] = (found.inliers, round(found.agreement, 4))
    return out


def _thumbnail_pixels(backend: Backend, tenant_id: str, sha256: str) -> Callable[[], NDArray[np.uint8]]:
    """Reads the grey frame of a stored thumbnail (called in the verification thread, when needed)."""
    path = backend.blobs.thumbnail_path(tenant_id, sha256, VERIFY_THUMBNAIL)
    return lambda: grey_of_bytes(path.read_bytes())
