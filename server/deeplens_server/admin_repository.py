"""PostgreSQL access for administration: tenants, limits, collections, API keys, audit events, purges.

As in ``repository.py``, every tenant-owned statement filters by the tenant id given first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from deeplens_server.db import ScopedPool, scoped
from deeplens_server.duplicate_store import remove_collection_images, remove_image
from deeplens_server.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from deeplens_server.model_pointer import SETTINGS_FIELDS

LIMIT_FIELDS = ("max_images", "max_image_bytes", "max_image_pixels", "requests_per_second", "max_concurrent_operations")
_TENANT_COLUMNS = (
    "id, display_name, create_time, update_time, delete_time, version, duplicate_policy, embedding_model, "
    "reindex_model, " + ", ".join(LIMIT_FIELDS)
)


@dataclass(frozen=True, slots=True)
class Limits:
    max_images: int = 0
    max_image_bytes: int = 0
    max_image_pixels: int = 0
    requests_per_second: int = 0
    max_concurrent_operations: int = 0


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: str
    display_name: str
    create_time: datetime
    update_time: datetime
    delete_time: datetime | None
    version: int
    limits: Limits
    # Overrides of the duplicate thresholds (DuplicatePolicy field -> value); empty: the server's defaults.
    duplicate_policy: dict[str, Any] = field(default_factory=dict)
    # The model version its searches use (None: not chosen yet, the server's default), and a re-index's target.
    embedding_model: str | None = None
    reindex_model: str | None = None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True, slots=True)
class CollectionRecord:
    tenant_id: str
    id: str
    display_name: str
    create_time: datetime
    image_count: int


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    tenant_id: str | None
    role: int
    display_name: str
    create_time: datetime
    revoke_time: datetime | None
    last_use_time: datetime | None


@dataclass(frozen=True, slots=True)
class KeyForAuth:
    key: ApiKeyRecord
    secret_sha256: bytes
    tenant_deleted: bool
    requests_per_second: int
    # The key's tenant's ``model_pointer.SETTINGS_FIELDS``, read in the same statement (None: a platform key).
    tenant_settings: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    tenant_id: str | None
    actor: str
    method: str
    resource: str
    outcome: str
    time: datetime


def _tenant(row: Any) -> TenantRecord:
    return TenantRecord(
        id=row["id"],
        display_name=row["display_name"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        delete_time=row["delete_time"],
        version=row["version"],
        limits=Limits(**{f: row[f] for f in LIMIT_FIELDS}),
        duplicate_policy=dict(row["duplicate_policy"] or {}),
        embedding_model=row["embedding_model"],
        reindex_model=row["reindex_model"],
    )


_KEY_COLUMNS = "id, tenant_id, role, display_name, create_time, revoke_time, last_use_time"


def _key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(**{k: row[k] for k in _KEY_COLUMNS.split(", ")})


class AdminRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._db = ScopedPool(pool)

    # Tenants

    async def create_tenant(
        self, tenant_id: str, display_name: str, limits: Limits, *, embedding_model: str
    ) -> TenantRecord:
        row = await self._db.fetchrow(
            tenant_id,
            f"INSERT INTO tenants (id, display_name, embedding_model, {', '.join(LIMIT_FIELDS)}) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING RETURNING {_TENANT_COLUMNS}",
            tenant_id,
            display_name,
            embedding_model,
            *(getattr(limits, f) for f in LIMIT_FIELDS),
        )
        if row is None:
            raise AlreadyExists(f"tenant {tenant_id!r} already exists", reason="TENANT_EXISTS")
        return _tenant(row)

    async def get_tenant(self, tenant_id: str) -> TenantRecord:
        row = await self._db.fetchrow(tenant_id, f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE id = $1", tenant_id)
        if row is None:
            raise NotFound("tenant", f"tenants/{tenant_id}", reason="TENANT_NOT_FOUND")
        return _tenant(row)

    async def list_tenants(self, *, after: str | None, limit: int, show_deleted: bool) -> list[TenantRecord]:
        rows = await self._db.fetch(
            None,
            f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE ($1::text IS NULL OR id > $1) "
            "AND ($2 OR delete_time IS NULL) ORDER BY id LIMIT $3",
            after,
            show_deleted,
            limit,
        )
        return [_tenant(r) for r in rows]

    async def update_tenant(self, tenant_id: str, changes: dict[str, Any], *, etag: str) -> TenantRecord:
        """Applies ``changes`` (column -> value); with an ``etag``, only if it is still current (AIP-154)."""
        current = await self.get_tenant(tenant_id)
        if current.delete_time is not None:
            raise FailedPrecondition("the tenant is deleted", reason="TENANT_DELETED")
        if etag and etag != current.etag:
            raise Aborted("the tenant changed since it was read; re-read it and retry", reason="ETAG_MISMATCH")
        if not changes:
            return current
        columns = list(changes)
        assignments = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(columns))
        row = await self._db.fetchrow(
            tenant_id,
            f"UPDATE tenants SET {assignments}, version = version + 1, update_time = now() "
            f"WHERE id = $1 AND version = $2 RETURNING {_TENANT_COLUMNS}",
            tenant_id,
            current.version,
            *(changes[c] for c in columns),
        )
        if row is None:
            raise Aborted("the tenant changed concurrently; re-read it and retry", reason="ETAG_MISMATCH")
        return _tenant(row)

    # Collections

    async def ensure_collection(self, tenant_id: str, collection_id: str) -> None:
        await self._db.execute(
            tenant_id,
            "INSERT INTO collections (tenant_id, id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            tenant_id,
            collection_id,
        )

    async def create_collection(self, tenant_id: str, collection_id: str, display_name: str) -> CollectionRecord:
        row = await self._db.fetchrow(
            tenant_id,
            "INSERT INTO collections (tenant_id, id, display_name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING "
            "RETURNING tenant_id, id, display_name, create_time, 0::bigint AS image_count",
            tenant_id,
            collection_id,
            display_name,
        )
        if row is None:
            raise AlreadyExists(f"collection {collection_id!r} already exists", reason="COLLECTION_EXISTS")
        return CollectionRecord(**dict(row))

    _COLLECTION_SELECT = (
        "SELECT c.tenant_id, c.id, c.display_name, c.create_time, "
        "(SELECT count(*) FROM images i WHERE i.tenant_id = c.tenant_id AND i.collection_id = c.id) AS image_count "
        "FROM collections c "
    )

    async def get_collection(self, tenant_id: str, collection_id: str) -> CollectionRecord:
        row = await self._db.fetchrow(
            tenant_id, self._COLLECTION_SELECT + "WHERE c.tenant_id = $1 AND c.id = $2", tenant_id, collection_id
        )
        if row is None:
            raise NotFound(
                "collection", f"tenants/{tenant_id}/collections/{collection_id}", reason="COLLECTION_NOT_FOUND"
            )
        return CollectionRecord(**dict(row))

    async def list_collections(self, tenant_id: str, *, after: str | None, limit: int) -> list[CollectionRecord]:
        rows = await self._db.fetch(
            tenant_id,
            self._COLLECTION_SELECT
            + "WHERE c.tenant_id = $1 AND ($2::text IS NULL OR c.id > $2) ORDER BY c.id LIMIT $3",
            tenant_id,
            after,
            limit,
        )
        return [CollectionRecord(**dict(r)) for r in rows]

    async def delete_collection(self, tenant_id: str, collection_id: str, *, force: bool) -> int:
        """Deletes the collection's row and, with ``force``, its image rows. Returns images deleted."""
        async with scoped(self._pool, tenant_id) as conn:
            exists = await conn.fetchval(
                "SELECT 1 FROM collections WHERE tenant_id = $1 AND id = $2 FOR UPDATE", tenant_id, collection_id
            )
            if not exists:
                raise NotFound(
                    "collection", f"tenants/{tenant_id}/collections/{collection_id}", reason="COLLECTION_NOT_FOUND"
                )
            count = await conn.fetchval(
                "SELECT count(*) FROM images WHERE tenant_id = $1 AND collection_id = $2", tenant_id, collection_id
            )
            if count and not force:
                raise FailedPrecondition(
                    f"the collection holds {count} images; delete with force to remove them too",
                    reason="COLLECTION_NOT_EMPTY",
                    metadata={"images": str(count)},
                )
            await remove_collection_images(conn, tenant_id, collection_id)
            await conn.execute("DELETE FROM collections WHERE tenant_id = $1 AND id = $2", tenant_id, collection_id)
            return int(count)

    # API keys

    async def create_api_key(
        self, tenant_id: str | None, key_id: str, role: int, display_name: str, secret_sha256: bytes
    ) -> ApiKeyRecord:
        row = await self._db.fetchrow(
            tenant_id,
            "INSERT INTO api_keys (id, tenant_id, role, display_name, secret_sha256) VALUES ($1, $2, $3, $4, $5) "
            f"RETURNING {_KEY_COLUMNS}",
            key_id,
            tenant_id,
            role,
            display_name,
            secret_sha256,
        )
        return _key(row)

    async def ensure_platform_key(self, key_id: str, display_name: str, secret_sha256: bytes, role: int) -> None:
        await self._db.execute(
            None,
            "INSERT INTO api_keys (id, tenant_id, role, display_name, secret_sha256) VALUES ($1, NULL, $2, $3, $4) "
            "ON CONFLICT (id) DO UPDATE SET secret_sha256 = EXCLUDED.secret_sha256, revoke_time = NULL "
            "WHERE api_keys.tenant_id IS NULL",
            key_id,
            role,
            display_name,
            secret_sha256,
        )

    async def key_for_auth(self, key_id: str) -> KeyForAuth | None:
        row = await self._db.fetchrow(
            None,
            "SELECT k.id, k.tenant_id, k.role, k.display_name, k.create_time, k.revoke_time, k.last_use_time, "
            "k.secret_sha256, t.delete_time IS NOT NULL AS tenant_deleted, "
            "coalesce(t.requests_per_second, 0) AS requests_per_second, "
            + ", ".join(f"t.{c}" for c in SETTINGS_FIELDS)
            + " FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1",
            key_id,
        )
        if row is None:
            return None
        settings = {c: row[c] for c in SETTINGS_FIELDS} if row["tenant_id"] else None
        return KeyForAuth(
            _key(row), bytes(row["secret_sha256"]), row["tenant_deleted"], row["requests_per_second"], settings
        )

    async def touch_api_key(self, key_id: str) -> None:
        """Records use, at most once a minute per key (the statement checks again: callers race)."""
        await self._db.execute(
            None,
            "UPDATE api_keys SET last_use_time = now() WHERE id = $1 "
            "AND (last_use_time IS NULL OR last_use_time < now() - interval '1 minute')",
            key_id,
        )

    async def list_api_keys(self, tenant_id: str, *, after: str | None, limit: int) -> list[ApiKeyRecord]:
        rows = await self._db.fetch(
            tenant_id,
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND ($2::text IS NULL OR id > $2) "
            "ORDER BY id LIMIT $3",
            tenant_id,
            after,
            limit,
        )
        return [_key(r) for r in rows]

    async def revoke_api_key(self, tenant_id: str, key_id: str) -> ApiKeyRecord:
        row = await self._db.fetchrow(
            tenant_id,
            "UPDATE api_keys SET revoke_time = coalesce(revoke_time, now()) WHERE tenant_id = $1 AND id = $2 "
            f"RETURNING {_KEY_COLUMNS}",
            tenant_id,
            key_id,
        )
        if row is None:
            raise NotFound("api key", f"tenants/{tenant_id}/apiKeys/{key_id}", reason="API_KEY_NOT_FOUND")
        return _key(row)

    # Audit log

    async def record_audit(self, tenant_id: str | None, actor: str, method: str, resource: str, outcome: str) -> None:
        await self._db.execute(
            tenant_id,
            "INSERT INTO audit_events (tenant_id, actor, method, resource, outcome) VALUES ($1, $2, $3, $4, $5)",
            tenant_id,
            actor,
            method,
            resource,
            outcome,
        )

    async def list_audit(self, tenant_id: str, *, before: int | None, limit: int) -> list[AuditRecord]:
        rows = await self._db.fetch(
            tenant_id,
            "SELECT id, tenant_id, actor, method, resource, outcome, time FROM audit_events "
            "WHERE tenant_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            tenant_id,
            before,
            limit,
        )
        return [AuditRecord(**dict(r)) for r in rows]

    # Quotas

    async def usage(self, tenant_id: str) -> tuple[int, int]:
        """(images held, operations pending or running)."""
        row = await self._db.fetchrow(
            tenant_id,
            "SELECT (SELECT count(*) FROM images WHERE tenant_id = $1) AS images, "
            "(SELECT count(*) FROM operations WHERE tenant_id = $1 AND end_time IS NULL) AS active",
            tenant_id,
        )
        assert row is not None
        return int(row["images"]), int(row["active"])

    # Purge

    async def purge_counts(self, tenant_id: str, keep_operation: str) -> dict[str, int]:
        row = await self._db.fetchrow(
            tenant_id,
            "SELECT (SELECT count(*) FROM images WHERE tenant_id = $1) AS images, "
            "(SELECT count(*) FROM operations WHERE tenant_id = $1 AND id <> $2) AS operations, "
            "(SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND revoke_time IS NULL) AS api_keys",
            tenant_id,
            keep_operation,
        )
        assert row is not None
        return dict(row)

    async def mark_tenant_deleted(self, tenant_id: str) -> None:
        """Closes the tenant to every key at once; the purge then removes its data."""
        async with scoped(self._pool, tenant_id) as conn:
            await conn.execute(
                "UPDATE tenants SET delete_time = coalesce(delete_time, now()), update_time = now(), "
                "version = version + 1 WHERE id = $1",
                tenant_id,
            )
            await conn.execute(
                "UPDATE api_keys SET revoke_time = coalesce(revoke_time, now()) WHERE tenant_id = $1", tenant_id
            )

    async def purge_tenant_rows(self, tenant_id: str, keep_operation: str) -> None:
        async with scoped(self._pool, tenant_id) as conn:
            await conn.execute("DELETE FROM images WHERE tenant_id = $1", tenant_id)
            for table in ("duplicate_links", "duplicate_groups", "duplicate_decisions"):
                await conn.execute(f"DELETE FROM {table} WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM collections WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM storage_locations WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM operations WHERE tenant_id = $1 AND id <> $2", tenant_id, keep_operation)


@dataclass(frozen=True, slots=True)
class StorageLocationRecord:
    tenant_id: str
    id: str
    display_name: str
    uri: str
    options: dict[str, str]
    credentials: bytes | None
    credential_hints: dict[str, str]
    create_time: datetime
    update_time: datetime
    version: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/storageLocations/{self.id}"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


_LOCATION_COLUMNS = (
    "tenant_id, id, display_name, uri, options, credentials, credential_hints, create_time, update_time, version"
)


def _location(row: Any) -> StorageLocationRecord:
    fields = dict(row)
    fields["credentials"] = bytes(fields["credentials"]) if fields["credentials"] is not None else None
    return StorageLocationRecord(**fields)


def _location_not_found(tenant_id: str, location_id: str) -> NotFound:
    return NotFound(
        "storage location", f"tenants/{tenant_id}/storageLocations/{location_id}", reason="STORAGE_LOCATION_NOT_FOUND"
    )


class StorageLocationRepository:
    """Storage locations; the caller seals credentials before they reach here."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._db = ScopedPool(pool)

    async def create(self, record: StorageLocationRecord) -> StorageLocationRecord:
        row = await self._db.fetchrow(
            record.tenant_id,
            "INSERT INTO storage_locations (tenant_id, id, display_name, uri, options, credentials, credential_hints) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING {_LOCATION_COLUMNS}",
            record.tenant_id,
            record.id,
            record.display_name,
            record.uri,
            record.options,
            record.credentials,
            record.credential_hints,
        )
        if row is None:
            raise AlreadyExists(f"storage location {record.id!r} already exists", reason="STORAGE_LOCATION_EXISTS")
        return _location(row)

    async def get(self, tenant_id: str, location_id: str) -> StorageLocationRecord:
        row = await self._db.fetchrow(
            tenant_id,
            f"SELECT {_LOCATION_COLUMNS} FROM storage_locations WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            location_id,
        )
        if row is None:
            raise _location_not_found(tenant_id, location_id)
        return _location(row)

    async def list(self, tenant_id: str, *, after: str | None, limit: int) -> list[StorageLocationRecord]:
        rows = await self._db.fetch(
            tenant_id,
            f"SELECT {_LOCATION_COLUMNS} FROM storage_locations WHERE tenant_id = $1 "
            "AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
            tenant_id,
            after,
            limit,
        )
        return [_location(r) for r in rows]

    async def replace(self, record: StorageLocationRecord, *, expected_version: int) -> StorageLocationRecord:
        row = await self._db.fetchrow(
            record.tenant_id,
            "UPDATE storage_locations SET display_name = $3, uri = $4, options = $5, credentials = $6, "
            "credential_hints = $7, version = version + 1, update_time = now() "
            f"WHERE tenant_id = $1 AND id = $2 AND version = $8 RETURNING {_LOCATION_COLUMNS}",
            record.tenant_id,
            record.id,
            record.display_name,
            record.uri,
            record.options,
            record.credentials,
            record.credential_hints,
            expected_version,
        )
        if row is None:
            raise Aborted("the storage location changed concurrently; re-read it and retry", reason="ETAG_MISMATCH")
        return _location(row)

    async def delete(self, tenant_id: str, location_id: str) -> None:
        result = await self._db.execute(
            tenant_id, "DELETE FROM storage_locations WHERE tenant_id = $1 AND id = $2", tenant_id, location_id
        )
        if result.endswith(" 0"):
            raise _location_not_found(tenant_id, location_id)


@dataclass(frozen=True, slots=True)
class SeenObject:
    path: str
    size_bytes: int
    etag: str
    last_modified: datetime | None
    collection_id: str
    image_id: str


class ObjectIndex:
    """What the last scan of each storage location saw (``storage_objects``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._db = ScopedPool(pool)
        self._pool = pool

    async def seen(self, tenant_id: str, location_id: str, prefix: str) -> dict[str, SeenObject]:
        rows = await self._db.fetch(
            tenant_id,
            "SELECT path, size_bytes, etag, last_modified, collection_id, image_id FROM storage_objects "
            "WHERE tenant_id = $1 AND location_id = $2 AND starts_with(path, $3)",
            tenant_id,
            location_id,
            prefix,
        )
        return {r["path"]: SeenObject(**dict(r)) for r in rows}

    async def record(self, tenant_id: str, location_id: str, objects: list[SeenObject]) -> None:
        async with scoped(self._pool, tenant_id) as conn:
            await conn.executemany(
                "INSERT INTO storage_objects (tenant_id, location_id, path, size_bytes, etag, last_modified, "
                "collection_id, image_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (tenant_id, location_id, path) DO UPDATE SET size_bytes = EXCLUDED.size_bytes, "
                "etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified, collection_id = EXCLUDED.collection_id, "
                "image_id = EXCLUDED.image_id, seen_time = now()",
                [
                    (tenant_id, location_id, o.path, o.size_bytes, o.etag, o.last_modified, o.collection_id, o.image_id)
                    for o in objects
                ],
            )

    async def forget(self, tenant_id: str, location_id: str, gone: list[SeenObject]) -> None:
        """Drops objects that disappeared, with their images' rows (vectors are the caller's)."""
        async with scoped(self._pool, tenant_id) as conn:
            await conn.executemany(
                "DELETE FROM storage_objects WHERE tenant_id = $1 AND location_id = $2 AND path = $3",
                [(tenant_id, location_id, o.path) for o in gone],
            )
            for o in gone:
                await remove_image(conn, tenant_id, (o.collection_id, o.image_id))

    async def path_of(self, tenant_id: str, collection_id: str, image_id: str) -> tuple[str, str] | None:
        """(storage location, path) of the object an image was scanned from, if it was."""
        row = await self._db.fetchrow(
            tenant_id,
            "SELECT location_id, path FROM storage_objects WHERE tenant_id = $1 AND collection_id = $2 "
            "AND image_id = $3 LIMIT 1",
            tenant_id,
            collection_id,
            image_id,
        )
        return (row["location_id"], row["path"]) if row is not None else None
