"""What operators ask of a running deployment: a tenant's figures, each dependency's health, the models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from deeplens_server import duplicate_store, model_pointer
from deeplens_server.backend import Backend
from deeplens_server.db import scoped
from deeplens_server.operations import ITEM_PENDING
from deeplens_server.vectors import VectorIndex

HEALTH_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class TenantStats:
    images: int
    bytes: int
    duplicate_images: int
    duplicate_groups: int
    reclaimable_bytes: int
    vectors: int
    operations_by_state: dict[int, int]
    pending_items: int
    queue_depth: int
    embedding_model: str
    reindex_model: str | None


async def tenant_stats(backend: Backend, tenant_id: str) -> TenantStats:
    models = await backend.tenant_models(tenant_id)

    async def sums() -> tuple[duplicate_store.Usage, int, dict[int, int], int]:
        async with scoped(backend.repo.pool, tenant_id) as conn:
            total = await duplicate_store.storage_total(conn, tenant_id, None)
            groups = await conn.fetchval(
                "SELECT count(*) FROM duplicate_groups WHERE tenant_id = $1 AND NOT resolved", tenant_id
            )
            states = await conn.fetch(
                "SELECT state, count(*) AS n FROM operations WHERE tenant_id = $1 GROUP BY state", tenant_id
            )
            # The state is written into the statement, not bound: a prepared statement's generic plan could not
            # otherwise use the partial index of pending items (``operation_items_pending``, state = 1).
            pending = await conn.fetchval(
                f"SELECT count(*) FROM operation_items WHERE tenant_id = $1 AND state = {ITEM_PENDING:d}", tenant_id
            )
        return total, int(groups), {int(r["state"]): int(r["n"]) for r in states}, int(pending)

    # The vector count is a second pass over the tenant's images where PostgreSQL answers it (Milvus Lite): on
    # its own connection, at the same time.
    (total, groups, states, pending), vectors = await asyncio.gather(
        sums(), backend.vector_count(tenant_id, models.active)
    )
    return TenantStats(
        images=total.images,
        bytes=total.bytes,
        duplicate_images=total.duplicate_images,
        duplicate_groups=groups,
        reclaimable_bytes=total.reclaimable_bytes,
        vectors=vectors,
        operations_by_state=states,
        pending_items=pending,
        queue_depth=await backend.queue.depth(),
        embedding_model=models.active,
        reindex_model=models.reindex,
    )


@dataclass(frozen=True, slots=True)
class Health:
    name: str
    healthy: bool
    seconds: float
    message: str = ""


async def _probe(name: str, check: Callable[[], Awaitable[object]]) -> Health:
    start = time.perf_counter()
    try:
        result = await asyncio.wait_for(check(), HEALTH_TIMEOUT_SECONDS)
    except TimeoutError:
        return Health(name, False, time.perf_counter() - start, f"no answer in {HEALTH_TIMEOUT_SECONDS:.0f} s")
    except Exception as exc:  # any failure of the dependency is the answer, not an error of this call
        return Health(name, False, time.perf_counter() - start, type(exc).__name__)
    if result is False:
        return Health(name, False, time.perf_counter() - start, "not ready")
    return Health(name, True, time.perf_counter() - start)


async def system_health(backend: Backend) -> list[Health]:
    return list(
        await asyncio.gather(
            _probe("postgresql", backend.repo.ping),
            _probe("redis", backend.queue.redis.ping),
            _probe("milvus", backend.vectors.ping),
            _probe("triton", backend.embedder.ready),
        )
    )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    ready: bool
    active: bool
    collection: str
    tenants: int = 0


async def models(backend: Backend) -> list[ModelInfo]:
    """Every model version in the inference server's repository (and any a tenant still uses), the default
    for new tenants marked, with how many tenants search with each."""
    default = backend.embedder.model_id
    in_use = await model_pointer.tenants_per_model(backend.repo.pool)
    found: dict[str, ModelInfo] = {}
    for entry in await backend.embedder.repository_index():
        if entry.version:
            name = f"{entry.name}@{entry.version}"
            found[name] = ModelInfo(name, entry.state == "READY", name == default, VectorIndex.collection(name))
    for name in {default, *in_use} - set(found):  # served from elsewhere, or the index omits it
        found[name] = ModelInfo(name, await backend.embedder.ready(name), name == default, VectorIndex.collection(name))
    return sorted(
        (replace(m, tenants=in_use.get(m.name, 0)) for m in found.values()), key=lambda m: (not m.active, m.name)
    )
