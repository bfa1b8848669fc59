"""Tenant-scoped PostgreSQL connections. Row-level security (migration 0004) shows a transaction only the rows
of the tenant set here — so a query that forgot its ``WHERE tenant_id`` still cannot reach another tenant.

``tenant=None`` opens the platform scope, used only where no tenant is known yet (API key lookup) or the
work spans tenants by design (listing tenants, platform keys, migrations).

A scoped transaction costs three round trips: ``BEGIN`` and the scope in one simple-protocol message, the
statements, ``COMMIT``. The scope is transaction-local (``set_config(..., true)``), so a connection whose last
use was one scoped transaction, ended, carries no session state, and the pool hands it back without asyncpg's
reset query (:func:`reset_connection`); a connection used any other way gets the full reset.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from deeplens_server.metrics import POSTGRES_SECONDS

_BEGIN_PLATFORM = "BEGIN; SELECT set_config('deeplens.scope', 'platform', true)"


def sql_literal(value: str) -> str:
    """``value`` as a PostgreSQL string constant, right whatever ``standard_conforming_strings`` is."""
    if "\x00" in value:
        raise ValueError("a PostgreSQL string cannot hold NUL")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def begin_statement(tenant: str | None) -> str:
    """The one message that opens a transaction scoped to ``tenant`` (None: platform)."""
    if tenant is None:
        return _BEGIN_PLATFORM
    return f"BEGIN; SELECT set_config('deeplens.tenant', {sql_literal(tenant)}, true)"


class ScopedConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no type information
    """A pool connection that remembers whether its last use left session state behind."""

    __slots__ = ("stateless",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stateless = False

    def mark_stateless(self) -> None:
        """Called (through the pool's proxy) when a scoped transaction has ended on this connection."""
        self.stateless = True

    def take_stateless(self) -> bool:
        """Whether the last use was one ended scoped transaction; the next use starts unmarked."""
        stateless, self.stateless = self.stateless, False
        return stateless


async def reset_connection(conn: asyncpg.Connection) -> None:
    """The pool's reset hook (after asyncpg has rolled back any open transaction): skipped for a connection
    that only ran a scoped transaction, asyncpg's full reset (advisory locks, cursors, ``LISTEN``, session
    settings) for any other."""
    take = getattr(conn, "take_stateless", None)  # a plain asyncpg.Connection has none: always reset
    if take is not None and take():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


@asynccontextmanager
async def scoped(pool: asyncpg.Pool, tenant: str | None) -> AsyncIterator[asyncpg.Connection]:
    began = time.perf_counter()
    begin = begin_statement(tenant)
    try:
        async with pool.acquire() as conn:
            await conn.execute(begin)
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):  # a broken connection: the pool's release terminates it
                    await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
            mark = getattr(conn, "mark_stateless", None)  # through the pool's proxy: a ScopedConnection's
            if mark is not None:
                mark()
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
