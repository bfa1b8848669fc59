"""Tiered, explained duplicate matching: EXACT (same SHA-256), NEAR_DUPLICATE (perceptual hashes close,
embeddings very close with a hash agreeing, or a similar pair that aligns geometrically — a crop, a small
rotation), SIMILAR (embeddings close). Pure functions; the stores live elsewhere.

The defaults come from the benchmark in docs/duplicates.md (bench/dedup_eval.py): they keep precision on
"duplicate" at 1.0 on distinct-but-similar photos while finding the transformed copies.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from deeplens_server.errors import InvalidArgument

EXACT = 1
NEAR_DUPLICATE = 2
SIMILAR = 3
DUPLICATE_TIERS = (EXACT, NEAR_DUPLICATE)


@dataclass(frozen=True, slots=True)
class DuplicatePolicy:
    max_phash_distance: int = 12
    max_dhash_distance: int = 14
    max_detail_distance: int = 100
    near_duplicate_min_cosine: float = 0.90
    embedding_max_hash_distance: int = 12
    similar_min_cosine: float = 0.75
    # A SIMILAR pair is a NEAR_DUPLICATE when one image aligns onto the other (keypoints.py) with this many
    # RANSAC inliers and this share of the overlap agreeing pixel for pixel.
    keypoint_min_inliers: int = 15
    keypoint_min_agreement: float = 0.8

    def override(self, values: dict[str, Any]) -> DuplicatePolicy:
        """This policy with the non-zero ``values`` applied, checked."""
        changes = {k: v for k, v in values.items() if v}
        for name, top in (
            ("max_phash_distance", 64),
            ("max_dhash_distance", 64),
            ("embedding_max_hash_distance", 64),
            ("max_detail_distance", 512),
            ("keypoint_min_inliers", 500),
        ):
            if name in changes and not 0 <= int(changes[name]) <= top:
                raise InvalidArgument(f"{name} must be in [0, {top}]", field=f"policy.{name}", reason="INVALID_POLICY")
        for name in ("near_duplicate_min_cosine", "similar_min_cosine", "keypoint_min_agreement"):
            if name in changes and not 0.0 < float(changes[name]) <= 1.0:
                raise InvalidArgument(f"{name} must be in (0, 1]", field=f"policy.{name}", reason="INVALID_POLICY")
        policy = replace(self, **changes)
        if policy.similar_min_cosine > policy.near_duplicate_min_cosine:
            raise InvalidArgument(
                "similar_min_cosine must not exceed near_duplicate_min_cosine",
                field="policy.similar_min_cosine",
                reason="INVALID_POLICY",
            )
        return policy


DEFAULT_POLICY = DuplicatePolicy()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What matching needs to know about one image."""

    sha256: str
    phash: str
    dhash: str
    detail: str = ""
    # (pHash, dHash, detail) of its flips and rotations (imaging.DIHEDRAL); empty when unknown.
    variants: tuple[tuple[str, str, str], ...] = ()

    def distances(self, other: Fingerprint) -> tuple[int, int, int]:
        """(pHash, dHash, detail) Hamming distances to ``other``'s canonical hashes, in the best of this image's
        orientations (by pHash + dHash)."""
        return min(
            (
                (hamming(p, other.phash), hamming(d, other.dhash), hamming(x, other.detail, bits=512))
                for p, d, x in ((self.phash, self.dhash, self.detail), *self.variants)
            ),
            key=lambda t: (t[0] + t[1], t),
        )


@dataclass(frozen=True, slots=True)
class Match:
    collection_id: str
    image_id: str
    sha256: str
    tier: int
    rule: str
    phash_distance: int
    dhash_distance: int
    detail_distance: int
    cosine: float
    # Geometric verification (0 when it was not run): RANSAC inliers and the agreeing share of the overlap.
    keypoint_inliers: int = 0
    keypoint_agreement: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.collection_id, self.image_id)


def hamming(a: str, b: str, *, bits: int = 64) -> int:
    """Bits that differ between two hex-encoded hashes (``bits``, all of them, when either is missing)."""
    if not a or not b or len(a) != len(b):
        return bits
    try:
        return (int(a, 16) ^ int(b, 16)).bit_count()
    except ValueError:
        return bits


def classify(policy: DuplicatePolicy, query: Fingerprint, other: Fingerprint, cosine: float) -> Match | None:
    """The pair's tier and evidence, or None when it is not even similar. ``Match`` names no image yet."""
    dp, dd, dx = query.distances(other)
    found = tier_of(
        policy,
        exact=query.sha256 == other.sha256,
        phash_distance=dp,
        dhash_distance=dd,
        detail_distance=dx,
        cosine=cosine,
    )
    return None if found is None else Match("", "", other.sha256, found[0], found[1], dp, dd, dx, cosine)


def tier_of(
    policy: DuplicatePolicy,
    *,
    exact: bool,
    phash_distance: int,
    dhash_distance: int,
    detail_distance: int,
    cosine: float,
) -> tuple[int, str] | None:
    """The tier and the rule that fired for a pair with these scores.

    NEAR_DUPLICATE by hashes: both 64-bit hashes close and the 256-bit detail hash agreeing too (which tells a
    stereo pair or a burst from a copy). NEAR_DUPLICATE by embedding: the embeddings nearly identical and one
    64-bit hash corroborating — never the embedding alone, for which random noise, textures and every shot of
    a chessboard look alike.
    """
    if exact:
        return EXACT, "sha256"
    if (
        phash_distance <= policy.max_phash_distance
        and dhash_distance <= policy.max_dhash_distance
        and detail_distance <= policy.max_detail_distance
    ):
        return NEAR_DUPLICATE, "hashes"
    if (
        cosine >= policy.near_duplicate_min_cosine
        and min(phash_distance, dhash_distance) <= policy.embedding_max_hash_distance
        and detail_distance <= policy.max_detail_distance
    ):
        return NEAR_DUPLICATE, "embedding"
    if cosine >= policy.similar_min_cosine:
        return SIMILAR, "embedding"
    return None


def match(
    policy: DuplicatePolicy, query: Fingerprint, key: tuple[str, str], other: Fingerprint, cosine: float
) -> Match | None:
    found = classify(policy, query, other, cosine)
    return None if found is None else replace(found, collection_id=key[0], image_id=key[1])


def verified(policy: DuplicatePolicy, m: Match, inliers: int, agreement: float) -> Match:
    """A SIMILAR match with its geometric verification: NEAR_DUPLICATE by rule ``keypoints`` when it aligns."""
    aligned = inliers >= policy.keypoint_min_inliers and agreement >= policy.keypoint_min_agreement
    if m.tier != SIMILAR:
        return m
    tier, rule = (NEAR_DUPLICATE, "keypoints") if aligned else (m.tier, m.rule)
    return replace(m, tier=tier, rule=rule, keypoint_inliers=inliers, keypoint_agreement=agreement)


def ranked(matches: list[Match]) -> list[Match]:
    """Strongest tier first, then the closest embeddings."""
    return sorted(matches, key=lambda m: (m.tier, -m.cosine, m.phash_distance, m.key))
