"""PostgreSQL access (asyncpg). Every method takes the tenant id first and every query filters by it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from deeplens_server.db import ScopedPool, scoped
from deeplens_server.errors import NotFound, Unavailable
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


@dataclass(frozen=True, slots=True)
class OperationRecord:
    tenant_id: str
    id: str
    kind: str
    state: int
    stage: str
    total: int
    processed: int
    succeeded: int
    failed: int
    request_id: str | None
    payload: dict[str, Any]
    response: bytes | None
    error: bytes | None
    create_time: datetime
    update_time: datetime
    end_time: datetime | None


_IMAGE_COLUMNS = (
    "tenant_id, collection_id, image_id, sha256, storage_uri, format, width, height, size_bytes, "
    "phash, dhash, model, tags, create_time"
)


def _image(row: Mapping[str, Any]) -> ImageRecord:
    fields = dict(row)
    fields["tags"] = list(fields["tags"])
    return ImageRecord(**fields)


def _operation(row: Mapping[str, Any]) -> OperationRecord:
    return OperationRecord(**dict(row))


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
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, init=_init_connection)
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

    # Operations

    async def create_operation(
        self,
        tenant_id: str,
        operation_id: str,
        *,
        kind: str,
        state: int,
        total: int,
        payload: dict[str, Any],
        request_id: str | None,
    ) -> tuple[OperationRecord, bool]:
        """Inserts an operation; with a ``request_id`` seen before, returns the earlier one and False."""
        async with scoped(self._pool, tenant_id) as conn:
            row = await conn.fetchrow(
                "INSERT INTO operations (tenant_id, id, kind, state, total, payload, request_id) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING *",
                tenant_id,
                operation_id,
                kind,
                state,
                total,
                payload,
                request_id,
            )
            if row is not None:
                return _operation(row), True
            row = await conn.fetchrow(
                "SELECT * FROM operations WHERE tenant_id = $1 AND request_id = $2", tenant_id, request_id
            )
            assert row is not None
            return _operation(row), False

    async def get_operation(self, tenant_id: str, operation_id: str) -> OperationRecord:
        row = await self._db.fetchrow(
            tenant_id, "SELECT * FROM operations WHERE tenant_id = $1 AND id = $2", tenant_id, operation_id
        )
        if row is None:
            raise NotFound("operation", f"tenants/{tenant_id}/operations/{operation_id}", reason="OPERATION_NOT_FOUND")
        return _operation(row)

    async def set_operation_stage(
        self, tenant_id: str, operation_id: str, *, state: int, stage: str
    ) -> OperationRecord:
        row = await self._db.fetchrow(
            tenant_id,
            "UPDATE operations SET state = $3, stage = $4, update_time = now() "
            "WHERE tenant_id = $1 AND id = $2 AND end_time IS NULL RETURNING *",
            tenant_id,
            operation_id,
            state,
            stage,
        )
        return _operation(row) if row is not None else await self.get_operation(tenant_id, operation_id)

    async def finish_operation(
        self,
        tenant_id: str,
        operation_id: str,
        *,
        state: int,
        response: bytes | None = None,
        error: bytes | None = None,
        image: ImageRecord | None = None,
    ) -> OperationRecord:
        """Ends an operation, storing ``image`` in the same transaction. Finishing twice is a no-op."""
        succeeded = 1 if error is None else 0
        async with scoped(self._pool, tenant_id) as conn:
            if image is not None:
                await self._upsert_image(conn, image)
            row = await conn.fetchrow(
                "UPDATE operations SET state = $3, stage = 'done', processed = total, succeeded = $4, "
                "failed = total - $4, response = $5, error = $6, update_time = now(), end_time = now() "
                "WHERE tenant_id = $1 AND id = $2 AND end_time IS NULL RETURNING *",
                tenant_id,
                operation_id,
                state,
                succeeded,
                response,
                error,
            )
        return _operation(row) if row is not None else await self.get_operation(tenant_id, operation_id)

    # Images

    @staticmethod
    async def _upsert_image(conn: asyncpg.Connection, image: ImageRecord) -> None:
        await conn.execute(
            "INSERT INTO images (tenant_id, collection_id, image_id, sha256, storage_uri, format, width, height, "
            "size_bytes, phash, dhash, model, tags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
            "ON CONFLICT (tenant_id, collection_id, image_id) DO UPDATE SET sha256 = EXCLUDED.sha256, "
            "storage_uri = EXCLUDED.storage_uri, format = EXCLUDED.format, width = EXCLUDED.width, "
            "height = EXCLUDED.height, size_bytes = EXCLUDED.size_bytes, phash = EXCLUDED.phash, "
            "dhash = EXCLUDED.dhash, model = EXCLUDED.model, tags = EXCLUDED.tags, update_time = now()",
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
        return _image(row)

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
        return {(r["collection_id"], r["image_id"]): _image(r) for r in rows}
