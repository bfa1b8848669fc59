"""PostgreSQL access (asyncpg). Every method takes the tenant id first and every query filters by it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from deeplens_server.db import ScopedConnection, ScopedPool, reset_connection, scoped
from deeplens_server.duplicates import Fingerprint
from deeplens_server.errors import NotFound, Unavailable
from deeplens_server.filters import ImageFilter, sql_conditions
from deeplens_server.imaging import phash_bands
from deeplens_server.migrations import migrate

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    tenant_id: str
    collection_id: str
    image_id: str
    sha256: str
    storage_uri: str
    format: str
    width: int
    height: int
    size_bytes: int
    phash: str
    dhash: str
    model: str
    tags: list[str] = field(default_factory=list)
    create_time: datetime | None = None
    exif: dict[str, Any] = field(default_factory=dict)
    thumbnails: list[int] = field(default_factory=list)
    # The storage location it was scanned from ('' for uploads), and its duplicate group (None if none).
    location_id: str = ""
    group_id: str | None = None
    # 256-bit detail hashes, and 'phash:dhash:detail' of its flips and rotations (imaging.DIHEDRAL order).
    detail_hash: str = ""
    hash_variants: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> Fingerprint:
        variants = tuple(tuple(v.split(":")) for v in self.hash_variants if v.count(":") == 2)
        return Fingerprint(self.sha256, self.phash, self.dhash, self.detail_hash, variants)  # type: ignore[arg-type]


_IMAGE_COLUMNS = (
    "tenant_id, collection_id, image_id, sha256, storage_uri, format, width, height, size_bytes, "
    "phash, dhash, model, tags, create_time, exif, thumbnails, location_id, group_id, detail_hash, hash_variants"
)
_FIELDS = frozenset(ImageRecord.__dataclass_fields__)


def image_from_row(row: Mapping[str, Any]) -> ImageRecord:
    fields = {k: v for k, v in dict(row).items() if k in _FIELDS}
    fields["tags"] = list(fields["tags"])
    fields["thumbnails"] = list(fields["thumbnails"])
    fields["hash_variants"] = list(fields.get("hash_variants") or [])
    return ImageRecord(**fields)


async def upsert_image(conn: asyncpg.Connection, image: ImageRecord) -> asyncpg.Record | None:
    """Writes the image's row; returns the row's (sha256, group_id) from before, None if it is new (one round
    trip: the CTE reads the snapshot the insert started from)."""
    return await conn.fetchrow(
        "WITH previous AS (SELECT sha256, group_id FROM images WHERE tenant_id = $1 AND collection_id = $2 "
        "AND image_id = $3), written AS ("
        "INSERT INTO images (tenant_id, collection_id, image_id, sha256, storage_uri, format, width, height, "
        "size_bytes, phash, dhash, model, tags, exif, thumbnails, location_id, detail_hash, hash_variants, "
        "phash_bands) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) "
        "ON CONFLICT (tenant_id, collection_id, image_id) DO UPDATE SET sha256 = EXCLUDED.sha256, "
        "storage_uri = EXCLUDED.storage_uri, format = EXCLUDED.format, width = EXCLUDED.width, "
        "height = EXCLUDED.height, size_bytes = EXCLUDED.size_bytes, phash = EXCLUDED.phash, "
        "dhash = EXCLUDED.dhash, model = EXCLUDED.model, tags = EXCLUDED.tags, exif = EXCLUDED.exif, "
        "thumbnails = EXCLUDED.thumbnails, location_id = EXCLUDED.location_id, "
        "detail_hash = EXCLUDED.detail_hash, hash_variants = EXCLUDED.hash_variants, "
        "phash_bands = EXCLUDED.phash_bands, update_time = now() RETURNING 1) "
        "SELECT sha256, group_id FROM previous",
        image.tenant_id,
        image.collection_id,
        image.image_id,
        image.sha256,
        image.storage_uri,
        image.format,
        image.width,
        image.height,
        image.size_bytes,
        image.phash,
        image.dhash,
        image.model,
        image.tags,
        image.exif,
        image.thumbnails,
        image.location_id,
        image.detail_hash,
        image.hash_variants,
        phash_bands(image.phash),
    )


_HASH_NEIGHBOURS = (
    f"SELECT {_IMAGE_COLUMNS}, (SELECT min(bit_count(('x' || images.phash)::bit(64) # ('x' || q)::bit(64))) "
    "FROM unnest($4::text[]) AS q) AS nearest FROM images WHERE tenant_id = $1 "
    "AND (sha256 = $2 OR (phash_bands && $3::text[] AND length(phash) = 16)) "
    "AND ($5::text IS NULL OR collection_id = $5) ORDER BY sha256 = $2 DESC, nearest, collection_id, image_id LIMIT $6"
)


async def hash_neighbours(
    conn: asyncpg.Connection, tenant_id: str, query: Fingerprint, *, collection_id: str | None = None, limit: int = 50
) -> list[ImageRecord]:
    """The hash lookup beside the ANN query: images with exactly these bytes, then images sharing a 16-bit pHash
    band with any of the query's orientations (GIN-indexed; no scan), nearest pHash first."""
    phashes = [p for p in (query.phash, *(v[0] for v in query.variants)) if len(p) == 16]
    bands = sorted({band for p in phashes for band in phash_bands(p)})
    rows = await conn.fetch(_HASH_NEIGHBOURS, tenant_id, query.sha256, bands, phashes, collection_id, limit)
    return [image_from_row(r) for r in rows]


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Repository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._db = ScopedPool(pool)

    @classmethod
    async def connect(cls, dsn: str, *, max_size: int = 10) -> Repository:
        """Opens a pool and applies pending migrations."""
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_size, init=_init_connection,
                connection_class=ScopedConnection, reset=reset_connection,
            )  # fmt: skip
        except (OSError, asyncpg.PostgresError) as exc:
            raise Unavailable("PostgreSQL is unavailable") from exc
        async with pool.acquire() as conn:
            await migrate(conn)
            if await conn.fetchval("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"):
                _log.warning(
                    "PostgreSQL role %r bypasses row-level security; connect as a role without SUPERUSER "
                    "and BYPASSRLS so tenant isolation is enforced by the database too",
                    await conn.fetchval("SELECT current_user"),
                )
        return cls(pool)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    # Images

    async def hash_neighbours(
        self, tenant_id: str, query: Fingerprint, *, collection_id: str | None = None, limit: int = 50
    ) -> list[ImageRecord]:
        """See ``hash_neighbours`` (the function); in its own transaction."""
        async with scoped(self._pool, tenant_id) as conn:
            return await hash_neighbours(conn, tenant_id, query, collection_id=collection_id, limit=limit)

    async def list_images(
        self,
        tenant_id: str,
        image_filter: ImageFilter,
        *,
        limit: int,
        after: tuple[str, str] | None,
    ) -> list[ImageRecord]:
        """Images in (collection, image) order, filtered, after the given key."""
        conditions, args = sql_conditions(image_filter, 2)
        if after is not None:
            n = len(args) + 2
            conditions.append(f"(collection_id, image_id) > (${n}, ${n + 1})")
            args += [after[0], after[1]]
        where = " AND ".join(["tenant_id = $1", *conditions])
        rows = await self._db.fetch(
            tenant_id,
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE {where} ORDER BY collection_id, image_id LIMIT {int(limit)}",
            tenant_id,
            *args,
        )
        return [image_from_row(r) for r in rows]

    async def content_in_use(self, tenant_id: str, sha256: str) -> bool:
        return bool(
            await self._db.fetchval(
                tenant_id,
                "SELECT EXISTS (SELECT 1 FROM images WHERE tenant_id = $1 AND sha256 = $2)",
                tenant_id,
                sha256,
            )
        )

    async def count_embedded(self, tenant_id: str, model: str) -> int:
        """The tenant's images whose embedding ``model`` wrote."""
        return int(
            await self._db.fetchval(
                tenant_id, "SELECT count(*) FROM images WHERE tenant_id = $1 AND model = $2", tenant_id, model
            )
        )

    async def get_image(self, tenant_id: str, collection_id: str, image_id: str) -> ImageRecord:
        row = await self._db.fetchrow(
            tenant_id,
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE tenant_id = $1 AND collection_id = $2 AND image_id = $3",
            tenant_id,
            collection_id,
            image_id,
        )
        if row is None:
            raise NotFound(
                "image",
                f"tenants/{tenant_id}/collections/{collection_id}/images/{image_id}",
                reason="IMAGE_NOT_FOUND",
            )
        return image_from_row(row)

    async def get_images(self, tenant_id: str, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], ImageRecord]:
        """Images by (collection_id, image_id); missing keys are simply absent from the result."""
        keys = list(keys)
        if not keys:
            return {}
        rows = await self._db.fetch(
            tenant_id,
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE tenant_id = $1 AND (collection_id, image_id) IN "
            "(SELECT * FROM unnest($2::text[], $3::text[]))",
            tenant_id,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return {(r["collection_id"], r["image_id"]): image_from_row(r) for r in rows}
