"""Which embedding model version serves each tenant, and the atomic switch a re-index ends with.

Vectors of different model versions live in different collections and are never compared: a tenant's
searches embed the query with its ``active`` model and read that model's collection only. While a re-index
runs, new images are embedded with both the active and the ``reindex`` model; when the re-index operation
ends successfully, the same transaction that ends it makes ``reindex`` the active model (``switch``), so no
search ever sees a half-filled collection. A failed or cancelled re-index leaves the active model in place.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from deeplens_server.db import scoped
from deeplens_server.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

_MODEL_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}@[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class TenantModels:
    active: str
    reindex: str | None = None
    operation_id: str | None = None
    generation: int = 0

    @property
    def writes(self) -> tuple[str, ...]:
        """The models a newly indexed image must be embedded with."""
        return (self.active,) if self.reindex is None else (self.active, self.reindex)


def split_model_id(model_id: str) -> tuple[str, str]:
    """``name@version`` into its parts; INVALID_ARGUMENT for anything else."""
    if not _MODEL_ID.fullmatch(model_id):
        raise InvalidArgument(
            "model must be `name@version` (e.g. `mobilenet_v2@1`)", field="model", reason="INVALID_MODEL"
        )
    name, version = model_id.split("@")
    return name, version


async def tenant_models(pool: asyncpg.Pool, tenant_id: str, default: str) -> TenantModels:
    """The tenant's models; a tenant that has none yet is given ``default`` (the server's configured model)."""
    return _models(await _tenant_row(pool, tenant_id, default, _MODELS))


async def tenant_settings(
    pool: asyncpg.Pool, tenant_id: str, default: str
) -> tuple[TenantModels, dict[str, Any], tuple[int, int]]:
    """The tenant's models (as ``tenant_models``), its duplicate-threshold overrides and its own image limits
    (bytes, pixels; 0: none of its own), in one read: every ingested image needs all three. Within an RPC, the
    first call takes the row read with the caller's API key instead (``remember_caller_tenant``)."""
    row = _take_caller_tenant(tenant_id) or await _tenant_row(pool, tenant_id, default, SETTINGS_COLUMNS)
    limits = (int(row["max_image_bytes"]), int(row["max_image_pixels"]))
    return _models(row), dict(row["duplicate_policy"] or {}), limits


_MODELS = "embedding_model, reindex_model, reindex_operation, embedding_generation"
# What ``tenant_settings`` reads: the admission of an RPC reads the same columns of the caller's tenant.
SETTINGS_FIELDS = (*_MODELS.split(", "), "duplicate_policy", "max_image_bytes", "max_image_pixels")
SETTINGS_COLUMNS = ", ".join(SETTINGS_FIELDS)


@dataclass(slots=True)
class _CallerTenant:
    tenant_id: str
    row: Mapping[str, Any] | None


_caller_tenant: contextvars.ContextVar[_CallerTenant | None] = contextvars.ContextVar(
    "deeplens_caller_tenant", default=None
)


def remember_caller_tenant(tenant_id: str, row: Mapping[str, Any]) -> None:
    """The caller's tenant row (``SETTINGS_FIELDS``), read in the same statement as its API key when the RPC
    was admitted: the RPC's first ``tenant_settings`` of that tenant uses it rather than a transaction of its
    own (a search then costs two PostgreSQL transactions, not three). Taken once, so a long-lived stream reads
    anything later from PostgreSQL."""
    _caller_tenant.set(_CallerTenant(tenant_id, row))


def _take_caller_tenant(tenant_id: str) -> Mapping[str, Any] | None:
    held = _caller_tenant.get()
    if held is None or held.tenant_id != tenant_id or held.row is None:
        return None
    row, held.row = held.row, None
    # A tenant without a model yet is given the default by ``_tenant_row``'s update.
    return row if row["embedding_model"] is not None else None


async def _tenant_row(pool: asyncpg.Pool, tenant_id: str, default: str, columns: str) -> asyncpg.Record:
    async with scoped(pool, tenant_id) as conn:
        row = await conn.fetchrow(f"SELECT {columns} FROM tenants WHERE id = $1", tenant_id)
        if row is None:
            raise NotFound("tenant", f"tenants/{tenant_id}", reason="TENANT_NOT_FOUND")
        if row["embedding_model"] is None:
            row = await conn.fetchrow(
                f"UPDATE tenants SET embedding_model = coalesce(embedding_model, $2) WHERE id = $1 RETURNING {columns}",
                tenant_id,
                default,
            )
    return row


def _models(row: Mapping[str, Any]) -> TenantModels:
    return TenantModels(
        row["embedding_model"], row["reindex_model"], row["reindex_operation"], int(row["embedding_generation"])
    )


async def check_generation(conn: asyncpg.Connection, tenant_id: str, embedded_under: int) -> None:
    """In the transaction storing a newly indexed image: its embeddings were made for the tenant's models at
    generation ``embedded_under``. The row lock (shared) orders this against ``begin_reindex`` and
    ``end_reindex``: an image stored after either sees the new generation and is embedded again (retry)."""
    generation = await conn.fetchval("SELECT embedding_generation FROM tenants WHERE id = $1 FOR SHARE", tenant_id)
    if generation is not None and int(generation) != embedded_under:
        raise Unavailable(
            "the tenant's embedding models changed while the image was indexed; it is indexed again",
            reason="MODEL_CHANGED",
        )


async def begin_reindex(
    conn: asyncpg.Connection, tenant_id: str, target: str, operation_id: str, default: str
) -> TenantModels:
    """Marks ``target`` as the model a re-index is filling (in the caller's transaction, which also creates
    the operation). FAILED_PRECONDITION if the tenant already uses it or another re-index runs."""
    row = await conn.fetchrow(
        "SELECT coalesce(embedding_model, $2) AS embedding_model, reindex_model, reindex_operation "
        "FROM tenants WHERE id = $1 FOR UPDATE",
        tenant_id,
        default,
    )
    if row is None:
        raise NotFound("tenant", f"tenants/{tenant_id}", reason="TENANT_NOT_FOUND")
    if row["reindex_model"] is not None:
        raise FailedPrecondition(
            f"a re-index to {row['reindex_model']} is running",
            reason="REINDEX_RUNNING",
            metadata={"operation": f"tenants/{tenant_id}/operations/{row['reindex_operation']}"},
        )
    if row["embedding_model"] == target:
        raise FailedPrecondition(
            f"the tenant already uses {target}", reason="MODEL_ALREADY_ACTIVE", metadata={"model": target}
        )
    updated = await conn.fetchrow(
        "UPDATE tenants SET embedding_model = $2, reindex_model = $3, reindex_operation = $4, "
        "embedding_generation = embedding_generation + 1 WHERE id = $1 "
        "RETURNING embedding_model, reindex_model, reindex_operation, embedding_generation",
        tenant_id,
        row["embedding_model"],
        target,
        operation_id,
    )
    return _models(updated)


async def end_reindex(conn: asyncpg.Connection, tenant_id: str, operation_id: str, *, switch: bool) -> str | None:
    """Ends the tenant's re-index ``operation_id`` in the caller's transaction: with ``switch``, its model
    becomes the active one (and the images say so). Returns the model the tenant stopped using (the one to
    clean up): the old active model after a switch, the abandoned target otherwise; None if nothing ran."""
    row = await conn.fetchrow(
        "SELECT embedding_model, reindex_model FROM tenants WHERE id = $1 AND reindex_operation = $2 FOR UPDATE",
        tenant_id,
        operation_id,
    )
    if row is None or row["reindex_model"] is None:
        return None
    active = row["reindex_model"] if switch else row["embedding_model"]
    await conn.execute(
        "UPDATE tenants SET embedding_model = $2, reindex_model = NULL, reindex_operation = NULL, "
        "embedding_generation = embedding_generation + 1 WHERE id = $1",
        tenant_id,
        active,
    )
    if switch:
        await conn.execute("UPDATE images SET model = $2 WHERE tenant_id = $1 AND model <> $2", tenant_id, active)
        return str(row["embedding_model"])
    return str(row["reindex_model"])


async def tenants_per_model(pool: asyncpg.Pool) -> dict[str, int]:
    """How many live tenants search with each model."""
    async with scoped(pool, None) as conn:
        rows = await conn.fetch(
            "SELECT embedding_model, count(*) AS n FROM tenants WHERE delete_time IS NULL "
            "AND embedding_model IS NOT NULL GROUP BY embedding_model"
        )
    return {r["embedding_model"]: int(r["n"]) for r in rows}
