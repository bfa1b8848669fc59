"""Duplicate links, the groups they form, and review decisions, in PostgreSQL.

Groups are connected components of EXACT and NEAR_DUPLICATE links (SIMILAR links are kept for GetImage and
FindDuplicates but never group). They are maintained as images arrive and leave — under a per-tenant
advisory lock, so concurrent ingests can't split a group — and listing them is a read. A pair a reviewer
called "not duplicates" never links into a group again; the decision is keyed by the two SHA-256s.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from deeplens_server.duplicates import DUPLICATE_TIERS, Match
from deeplens_server.repository import ImageRecord, image_from_row, upsert_image

KEEP_ALL = 1
NOT_DUPLICATES = 2

Key = tuple[str, str]
# Finds more matches for an image inside the transaction that stores it, once the tenant's lock is held, given
# the keys already matched (matching.late_matcher).
LateMatcher = Callable[[asyncpg.Connection, set[Key]], Awaitable[list[Match]]]


@dataclass(frozen=True, slots=True)
class LinkRecord:
    a: Key
    b: Key
    tier: int
    rule: str
    phash_distance: int
    dhash_distance: int
    detail_distance: int
    cosine: float
    decision: int
    keypoint_inliers: int = 0
    keypoint_agreement: float = 0.0

    def other(self, key: Key) -> Key:
        return self.b if self.a == key else self.a


@dataclass(frozen=True, slots=True)
class GroupRecord:
    tenant_id: str
    id: str
    members: int
    total_bytes: int
    reclaimable_bytes: int
    resolved: bool
    keeper: Key
    version: int
    update_time: datetime

    @property
    def etag(self) -> str:
        return f"{self.id}-{self.version}"


def _pair(a: Key, b: Key) -> tuple[Key, Key]:
    return (a, b) if a < b else (b, a)


def _group(row: asyncpg.Record) -> GroupRecord:
    return GroupRecord(
        tenant_id=row["tenant_id"],
        id=row["id"],
        members=row["members"],
        total_bytes=row["total_bytes"],
        reclaimable_bytes=row["reclaimable_bytes"],
        resolved=row["resolved"],
        keeper=(row["keeper_collection"], row["keeper_image"]),
        version=row["version"],
        update_time=row["update_time"],
    )


async def lock_tenant(conn: asyncpg.Connection, tenant_id: str) -> None:
    """Serialises group changes of one tenant until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"duplicates:{tenant_id}")


_LINK_SELECT = (
    "SELECT l.a_collection, l.a_image, l.b_collection, l.b_image, l.tier, l.rule, l.phash_distance, "
    "l.dhash_distance, l.detail_distance, l.cosine, l.keypoint_inliers, l.keypoint_agreement, "
    "coalesce(d.decision, 0) AS decision FROM duplicate_links l "
    "LEFT JOIN duplicate_decisions d ON d.tenant_id = l.tenant_id "
    "AND d.sha_a = least(l.a_sha256, l.b_sha256) AND d.sha_b = greatest(l.a_sha256, l.b_sha256) "
)


def _link(row: asyncpg.Record) -> LinkRecord:
    return LinkRecord(
        a=(row["a_collection"], row["a_image"]),
        b=(row["b_collection"], row["b_image"]),
        tier=row["tier"],
        rule=row["rule"],
        phash_distance=row["phash_distance"],
        dhash_distance=row["dhash_distance"],
        detail_distance=row["detail_distance"],
        cosine=row["cosine"],
        decision=row["decision"],
        keypoint_inliers=row["keypoint_inliers"],
        keypoint_agreement=row["keypoint_agreement"],
    )


async def links_of(conn: asyncpg.Connection, tenant_id: str, key: Key) -> list[LinkRecord]:
    """Every link touching one image, all tiers."""
    rows = await conn.fetch(
        _LINK_SELECT + "WHERE l.tenant_id = $1 AND ((l.a_collection = $2 AND l.a_image = $3) "
        "OR (l.b_collection = $2 AND l.b_image = $3))",
        tenant_id,
        key[0],
        key[1],
    )
    return [_link(r) for r in rows]


# Duplicate links with both ends in group $2 (and their decisions), for tiers $3.
_GROUP_LINKS = (
    "SELECT l.a_collection, l.a_image, l.b_collection, l.b_image, l.tier, l.rule, l.phash_distance, "
    "l.dhash_distance, l.detail_distance, l.cosine, l.keypoint_inliers, l.keypoint_agreement, "
    "coalesce(d.decision, 0) AS decision FROM duplicate_links l "
    "JOIN images a ON a.tenant_id = l.tenant_id AND a.collection_id = l.a_collection AND a.image_id = l.a_image "
    "JOIN images b ON b.tenant_id = l.tenant_id AND b.collection_id = l.b_collection AND b.image_id = l.b_image "
    "LEFT JOIN duplicate_decisions d ON d.tenant_id = l.tenant_id "
    "AND d.sha_a = least(l.a_sha256, l.b_sha256) AND d.sha_b = greatest(l.a_sha256, l.b_sha256) "
    "WHERE l.tenant_id = $1 AND a.group_id = $2 AND b.group_id = $2 AND l.tier = ANY($3::smallint[])"
)


async def group_links(conn: asyncpg.Connection, tenant_id: str, group_id: str) -> list[LinkRecord]:
    """The duplicate links inside a group."""
    rows = await conn.fetch(_GROUP_LINKS, tenant_id, group_id, list(DUPLICATE_TIERS))
    return [_link(r) for r in rows]


_LINK_UPSERT = (
    "INSERT INTO duplicate_links (tenant_id, a_collection, a_image, b_collection, b_image, a_sha256, "
    "b_sha256, tier, rule, phash_distance, dhash_distance, detail_distance, cosine, keypoint_inliers, "
    "keypoint_agreement) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
    "ON CONFLICT (tenant_id, a_collection, a_image, b_collection, b_image) DO UPDATE SET "
    "a_sha256 = EXCLUDED.a_sha256, b_sha256 = EXCLUDED.b_sha256, tier = EXCLUDED.tier, "
    "rule = EXCLUDED.rule, phash_distance = EXCLUDED.phash_distance, "
    "dhash_distance = EXCLUDED.dhash_distance, detail_distance = EXCLUDED.detail_distance, "
    "cosine = EXCLUDED.cosine, keypoint_inliers = EXCLUDED.keypoint_inliers, "
    "keypoint_agreement = EXCLUDED.keypoint_agreement"
)


async def store_image(
    conn: asyncpg.Connection,
    image: ImageRecord,
    matches: Sequence[Match],
    late: LateMatcher | None = None,
) -> bool:
    """Writes the image row and its links, and joins it to its duplicates' group. Returns whether it has a
    duplicate. Runs inside the caller's transaction; ``late`` finds more matches once the tenant's lock is
    held (matching.late_matcher)."""
    tenant = image.tenant_id
    key = (image.collection_id, image.image_id)
    await lock_tenant(conn, tenant)
    if late is not None:
        matches = [*matches, *await late(conn, {m.key for m in matches})]
    previous = await upsert_image(conn, image)
    if previous is not None and previous["sha256"] != image.sha256:
        await _forget_links(conn, tenant, key, previous["group_id"])  # new content under the old name
    rows = []
    for m in matches:
        if m.key == key:
            continue
        (a, b) = _pair(key, m.key)
        a_sha, b_sha = (image.sha256, m.sha256) if a == key else (m.sha256, image.sha256)
        rows.append((
            tenant, a[0], a[1], b[0], b[1], a_sha, b_sha, m.tier, m.rule, m.phash_distance,
            m.dhash_distance, m.detail_distance, m.cosine, m.keypoint_inliers, m.keypoint_agreement,
        ))  # fmt: skip
    if rows:  # one round trip for all of them (asyncpg pipelines executemany)
        await conn.executemany(_LINK_UPSERT, rows)
    if previous is None and not matches:
        return False  # a new image with no duplicate: no link names it (deletes remove theirs)
    return await _join(conn, tenant, key)


async def _forget_links(conn: asyncpg.Connection, tenant_id: str, key: Key, group_id: str | None) -> None:
    await conn.execute(
        "DELETE FROM duplicate_links WHERE tenant_id = $1 AND ((a_collection = $2 AND a_image = $3) "
        "OR (b_collection = $2 AND b_image = $3))",
        tenant_id,
        *key,
    )
    if group_id is not None:
        await conn.execute(
            "UPDATE images SET group_id = NULL WHERE tenant_id = $1 AND collection_id = $2 AND image_id = $3",
            tenant_id,
            *key,
        )
        await regroup(conn, tenant_id, group_id)


async def _existing(conn: asyncpg.Connection, tenant_id: str, keys: Iterable[Key]) -> dict[Key, str | None]:
    keys = list(keys)
    rows = await conn.fetch(
        "SELECT collection_id, image_id, group_id FROM images WHERE tenant_id = $1 AND (collection_id, image_id) "
        "IN (SELECT * FROM unnest($2::text[], $3::text[]))",
        tenant_id,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["collection_id"], r["image_id"]): r["group_id"] for r in rows}


async def _join(conn: asyncpg.Connection, tenant_id: str, key: Key) -> bool:
    """Unites the image with the groups of its duplicates (images that exist; decided pairs excluded)."""
    links = [
        link
        for link in await links_of(conn, tenant_id, key)
        if link.tier in DUPLICATE_TIERS and link.decision != NOT_DUPLICATES
    ]
    if not links:
        return False
    present = await _existing(conn, tenant_id, [key, *(link.other(key) for link in links)])
    neighbours = [link.other(key) for link in links if link.other(key) in present]
    if not neighbours:
        return False
    groups = sorted({g for g in present.values() if g is not None})
    if groups:
        sizes = {
            r["id"]: r["members"]
            for r in await conn.fetch(
                "SELECT id, members FROM duplicate_groups WHERE tenant_id = $1 AND id = ANY($2::text[])",
                tenant_id,
                groups,
            )
        }
        target = max(groups, key=lambda g: (sizes.get(g, 0), g))
    else:
        target = uuid.uuid4().hex[:16]
    others = [g for g in groups if g != target]
    component = [key, *neighbours]
    await conn.execute(
        "UPDATE images SET group_id = $2 WHERE tenant_id = $1 AND ((collection_id, image_id) IN "
        "(SELECT * FROM unnest($3::text[], $4::text[])) OR group_id = ANY($5::text[]))",
        tenant_id,
        target,
        [k[0] for k in component],
        [k[1] for k in component],
        others,
    )
    await conn.execute("DELETE FROM duplicate_groups WHERE tenant_id = $1 AND id = ANY($2::text[])", tenant_id, others)
    await refresh_group(conn, tenant_id, target)
    return True


async def _members(conn: asyncpg.Connection, tenant_id: str, group_id: str) -> list[Key]:
    rows = await conn.fetch(
        "SELECT collection_id, image_id FROM images WHERE tenant_id = $1 AND group_id = $2", tenant_id, group_id
    )
    return [(r["collection_id"], r["image_id"]) for r in rows]


# The keeper rule of duplicates.keeper, in SQL: the largest resolution, then the largest file, then the oldest.
_KEEPER_ORDER = "width::bigint * height DESC, size_bytes DESC, create_time, collection_id, image_id"


async def refresh_group(conn: asyncpg.Connection, tenant_id: str, group_id: str) -> None:
    """Recomputes a group's keeper, sizes and review state from its members; a group of one dissolves.
    Aggregates in SQL, so the cost stays small for large groups."""
    stats = await conn.fetchrow(
        "SELECT count(*) AS members, coalesce(sum(size_bytes), 0)::bigint AS total FROM images "
        "WHERE tenant_id = $1 AND group_id = $2",
        tenant_id,
        group_id,
    )
    if stats["members"] < 2:
        await conn.execute(
            "UPDATE images SET group_id = NULL WHERE tenant_id = $1 AND group_id = $2", tenant_id, group_id
        )
        await conn.execute("DELETE FROM duplicate_groups WHERE tenant_id = $1 AND id = $2", tenant_id, group_id)
        return
    keep = await conn.fetchrow(
        f"SELECT collection_id, image_id, size_bytes FROM images WHERE tenant_id = $1 AND group_id = $2 "
        f"ORDER BY {_KEEPER_ORDER} LIMIT 1",
        tenant_id,
        group_id,
    )
    # Resolved: no duplicate link inside the group lacks a decision.
    undecided = await conn.fetchval(
        "SELECT EXISTS (" + _GROUP_LINKS + " AND d.decision IS NULL)", tenant_id, group_id, list(DUPLICATE_TIERS)
    )
    await conn.execute(
        "INSERT INTO duplicate_groups (tenant_id, id, members, total_bytes, reclaimable_bytes, resolved, "
        "keeper_collection, keeper_image) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (tenant_id, id) DO UPDATE SET members = EXCLUDED.members, total_bytes = EXCLUDED.total_bytes, "
        "reclaimable_bytes = EXCLUDED.reclaimable_bytes, resolved = EXCLUDED.resolved, "
        "keeper_collection = EXCLUDED.keeper_collection, keeper_image = EXCLUDED.keeper_image, "
        "version = duplicate_groups.version + 1, update_time = now()",
        tenant_id, group_id, stats["members"], stats["total"], stats["total"] - keep["size_bytes"], not undecided,
        keep["collection_id"], keep["image_id"],
    )  # fmt: skip


async def regroup(conn: asyncpg.Connection, tenant_id: str, group_id: str) -> None:
    """Splits a group into the connected components of its remaining links. The largest keeps the id."""
    members = await _members(conn, tenant_id, group_id)
    parent = {k: k for k in members}

    def find(k: Key) -> Key:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for link in await group_links(conn, tenant_id, group_id):
        if link.decision != NOT_DUPLICATES:
            parent[find(link.a)] = find(link.b)
    components: dict[Key, list[Key]] = {}
    for k in members:
        components.setdefault(find(k), []).append(k)
    ordered = sorted(components.values(), key=lambda c: (-len(c), min(c)))
    for index, component in enumerate(ordered):
        new_id = group_id if index == 0 and len(component) > 1 else uuid.uuid4().hex[:16]
        await conn.execute(
            "UPDATE images SET group_id = $2 WHERE tenant_id = $1 AND (collection_id, image_id) IN "
            "(SELECT * FROM unnest($3::text[], $4::text[]))",
            tenant_id,
            new_id if len(component) > 1 else None,
            [k[0] for k in component],
            [k[1] for k in component],
        )
        if len(component) > 1:
            await refresh_group(conn, tenant_id, new_id)
    if not ordered or len(ordered[0]) < 2:
        await conn.execute("DELETE FROM duplicate_groups WHERE tenant_id = $1 AND id = $2", tenant_id, group_id)


async def remove_image(conn: asyncpg.Connection, tenant_id: str, key: Key) -> ImageRecord | None:
    """Deletes an image's row and links and mends its group; returns the row it deleted."""
    await lock_tenant(conn, tenant_id)
    row = await conn.fetchrow(
        "DELETE FROM images WHERE tenant_id = $1 AND collection_id = $2 AND image_id = $3 RETURNING *",
        tenant_id,
        *key,
    )
    if row is None:
        return None
    await _forget_links(conn, tenant_id, key, None)
    if row["group_id"] is not None:
        await regroup(conn, tenant_id, row["group_id"])
    return image_from_row(row)


async def remove_collection_images(conn: asyncpg.Connection, tenant_id: str, collection_id: str) -> None:
    """Deletes a collection's image rows and links, and mends the groups they were in."""
    await lock_tenant(conn, tenant_id)
    groups = await conn.fetch(
        "DELETE FROM images WHERE tenant_id = $1 AND collection_id = $2 RETURNING group_id", tenant_id, collection_id
    )
    await conn.execute(
        "DELETE FROM duplicate_links WHERE tenant_id = $1 AND (a_collection = $2 OR b_collection = $2)",
        tenant_id,
        collection_id,
    )
    for group_id in sorted({r["group_id"] for r in groups if r["group_id"] is not None}):
        await regroup(conn, tenant_id, group_id)


async def decide(conn: asyncpg.Connection, tenant_id: str, group_id: str, decision: int, actor: str) -> None:
    """Records a decision on every duplicate link of the group (by content), then mends the group."""
    await lock_tenant(conn, tenant_id)
    await conn.execute(
        "INSERT INTO duplicate_decisions (tenant_id, sha_a, sha_b, decision, actor) "
        "SELECT DISTINCT $1, least(l.a_sha256, l.b_sha256), greatest(l.a_sha256, l.b_sha256), $3::smallint, $4 "
        "FROM duplicate_links l JOIN images a ON a.tenant_id = l.tenant_id AND a.collection_id = l.a_collection "
        "AND a.image_id = l.a_image JOIN images b ON b.tenant_id = l.tenant_id AND b.collection_id = l.b_collection "
        "AND b.image_id = l.b_image WHERE l.tenant_id = $1 AND a.group_id = $2 AND b.group_id = $2 "
        "AND l.tier = ANY($5::smallint[]) "
        "ON CONFLICT (tenant_id, sha_a, sha_b) DO UPDATE SET decision = EXCLUDED.decision, actor = EXCLUDED.actor, "
        "time = now()",
        tenant_id,
        group_id,
        decision,
        actor,
        list(DUPLICATE_TIERS),
    )
    if decision == NOT_DUPLICATES:
        await regroup(conn, tenant_id, group_id)
    else:
        await refresh_group(conn, tenant_id, group_id)


async def get_group(conn: asyncpg.Connection, tenant_id: str, group_id: str) -> GroupRecord | None:
    row = await conn.fetchrow("SELECT * FROM duplicate_groups WHERE tenant_id = $1 AND id = $2", tenant_id, group_id)
    return _group(row) if row is not None else None


async def list_groups(
    conn: asyncpg.Connection,
    tenant_id: str,
    *,
    collection_id: str | None,
    include_resolved: bool,
    limit: int,
    after: tuple[int, str] | None,
) -> tuple[list[GroupRecord], int]:
    """Groups by reclaimable bytes (descending), then id; and how many match in all."""
    where = "g.tenant_id = $1 AND ($2 OR NOT g.resolved) AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM images i "
    where += "WHERE i.tenant_id = g.tenant_id AND i.group_id = g.id AND i.collection_id = $3))"
    args: list[Any] = [tenant_id, include_resolved, collection_id]
    total = await conn.fetchval(f"SELECT count(*) FROM duplicate_groups g WHERE {where}", *args)
    page_where = where
    if after is not None:
        page_where += " AND (g.reclaimable_bytes < $4 OR (g.reclaimable_bytes = $4 AND g.id > $5))"
        args += [after[0], after[1]]
    rows = await conn.fetch(
        f"SELECT g.* FROM duplicate_groups g WHERE {page_where} ORDER BY g.reclaimable_bytes DESC, g.id "
        f"LIMIT {int(limit)}",
        *args,
    )
    return [_group(r) for r in rows], int(total)


async def group_members(conn: asyncpg.Connection, tenant_id: str, group_id: str) -> list[ImageRecord]:
    rows = await conn.fetch("SELECT * FROM images WHERE tenant_id = $1 AND group_id = $2", tenant_id, group_id)
    return [image_from_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class Usage:
    key: str
    images: int
    bytes: int
    duplicate_images: int
    reclaimable_bytes: int


_USAGE = (
    "count(*) AS images, coalesce(sum(i.size_bytes), 0)::bigint AS bytes, count(g.id) AS duplicate_images, "
    "coalesce(sum(i.size_bytes) FILTER (WHERE g.id IS NOT NULL AND NOT g.resolved "
    "AND (i.collection_id, i.image_id) <> (g.keeper_collection, g.keeper_image)), 0)::bigint AS reclaimable_bytes "
    "FROM images i LEFT JOIN duplicate_groups g ON g.tenant_id = i.tenant_id AND g.id = i.group_id "
    "WHERE i.tenant_id = $1 AND ($2::text IS NULL OR i.collection_id = $2)"
)


def _usage(key: str | None, r: asyncpg.Record) -> Usage:
    return Usage(key or "", r["images"], r["bytes"], r["duplicate_images"], r["reclaimable_bytes"])


async def storage_total(conn: asyncpg.Connection, tenant_id: str, collection_id: str | None) -> Usage:
    """The images, bytes, duplicates and reclaimable bytes of the tenant (or of one collection)."""
    row = await conn.fetchrow(f"SELECT {_USAGE}", tenant_id, collection_id)
    assert row is not None  # an aggregate without GROUP BY returns one row
    return _usage(None, row)


async def storage_usage(
    conn: asyncpg.Connection, tenant_id: str, collection_id: str | None
) -> tuple[Usage, list[Usage], list[Usage]]:
    """(total, by storage location, by collection), read in one pass over the images. Reclaimable: unresolved
    groups' members but the keeper. Uploads (no storage location) have the key ""."""
    rows = await conn.fetch(
        f"SELECT GROUPING(i.location_id, i.collection_id) AS level, i.location_id, i.collection_id, {_USAGE} "
        "GROUP BY GROUPING SETS ((), (i.location_id), (i.collection_id))",
        tenant_id,
        collection_id,
    )
    # GROUPING sets a bit for each argument that is not grouped: 3 the total, 1 by location, 2 by collection.
    # The empty grouping set gives its row even when no image matches.
    total = _usage(None, next(r for r in rows if r["level"] == 3))
    # Keys in code-point order, whatever the database's collation (uploads, key "", first).
    by_location = sorted((_usage(r["location_id"], r) for r in rows if r["level"] == 1), key=lambda u: u.key)
    by_collection = sorted((_usage(r["collection_id"], r) for r in rows if r["level"] == 2), key=lambda u: u.key)
    return total, by_location, by_collection
