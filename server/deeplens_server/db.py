"""Tenant-scoped PostgreSQL connections. Row-level security (migration 0004) shows a transaction only the rows
of the tenant set here — so a query that forgot its ``WHERE tenant_id`` still cannot reach another tenant.

``tenant=None`` opens the platform scope, used only where no tenant is known yet (API key lookup) or the
work spans tenants by design (listing tenants, platform keys, migrations).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from deeplens_server.metrics import POSTGRES_SECONDS

# What a tenant id may be (names.check_tenant_id): checked again where one becomes part of an SQL text.
_TENANT_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _begin(tenant: str | None) -> str:
    """BEGIN and the transaction's scope as one message: one round trip instead of two. Simple-protocol
    messages take no parameters, so the tenant id is written into the text: only a valid id, which holds no
    quote, backslash or anything else a literal could end on."""
    if tenant is None:
        return "BEGIN; SELECT set_config('deeplens.scope', 'platform', true)"
    if not _TENANT_ID.fullmatch(tenant):
        raise ValueError(f"not a tenant id: {tenant!r}")
    return f"BEGIN; SELECT set_config('deeplens.tenant', '{tenant}', true)"


@asynccontextmanager
async def scoped(pool: asyncpg.Pool, tenant: str | None) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction scoped to ``tenant`` (None: the platform scope), committed when the block
    ends and rolled back when it raises. Three round trips around the caller's queries: BEGIN with the scope,
    COMMIT, and none on release (the pool skips its reset: ``reset_nothing``). The transaction is begun by
    hand, so the block must not call ``conn.transaction()`` (asyncpg refuses it in one begun by hand)."""
    began = time.perf_counter()
    try:
        async with pool.acquire() as conn:
            await conn.execute(_begin(tenant))
            try:
                yield conn
            except BaseException:
                # A broken connection cannot roll back; the pool then rolls back or drops it on release.
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
    finally:
        # From asking the pool for a connection to the commit: the wait for a free connection counts too.
        POSTGRES_SECONDS.observe(time.perf_counter() - began)


async def reset_nothing(conn: asyncpg.Connection) -> None:
    """The pool's reset on release. asyncpg's default sends a query each time (unlock advisory locks, close
    cursors, UNLISTEN, RESET ALL); a pool connection here holds none of those: every setting is transaction-local
    (``scoped``) and migrations run on a connection of their own. asyncpg still rolls back a transaction left
    open before calling this."""
    del conn


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
