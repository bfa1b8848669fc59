"""Tenant-scoped PostgreSQL connections. Row-level security (migration 0004) shows a transaction only the rows
of the tenant set here — so a query that forgot its ``WHERE tenant_id`` still cannot reach another tenant.

``tenant=None`` opens the platform scope, used only where no tenant is known yet (API key lookup) or the
work spans tenants by design (listing tenants, platform keys, migrations).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from deeplens_server.metrics import POSTGRES_SECONDS


@asynccontextmanager
async def scoped(pool: asyncpg.Pool, tenant: str | None) -> AsyncIterator[asyncpg.Connection]:
    began = time.perf_counter()
    try:
        async with pool.acquire() as conn, conn.transaction():
            if tenant is None:
                await conn.execute("SELECT set_config('deeplens.scope', 'platform', true)")
            else:
                await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", tenant)
            yield conn
    finally:
        # From asking the pool for a connection to the commit: the wait for a free connection counts too.
        POSTGRES_SECONDS.observe(time.perf_counter() - began)


class ScopedPool:
    """The pool's query methods, each run in its own transaction scoped to ``tenant`` (None: platform)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def fetchrow(self, tenant: str | None, query: str, *args: Any) -> asyncpg.Record | None:
        async with scoped(self.pool, tenant) as conn:
            return await conn.fetchrow(query, *args)

    async def fetch(self, tenant: str | None, query: str, *args: Any) -> list[asyncpg.Record]:
        async with scoped(self.pool, tenant) as conn:
            return list(await conn.fetch(query, *args))

    async def fetchval(self, tenant: str | None, query: str, *args: Any) -> Any:
        async with scoped(self.pool, tenant) as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, tenant: str | None, query: str, *args: Any) -> str:
        async with scoped(self.pool, tenant) as conn:
            return str(await conn.execute(query, *args))
