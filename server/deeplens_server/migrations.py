"""Schema migrations: numbered SQL files in ``migrations/``, applied in order, once, under an advisory lock.

Any process (server, worker, stack) may call ``migrate`` at startup; concurrent callers serialize on the lock.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
from collections.abc import AsyncIterator

import asyncpg

_log = logging.getLogger(__name__)
_LOCK_KEY = 0x6465_6570_6C65_6E73 & 0x7FFF_FFFF_FFFF_FFFF  # "deeplens"
VECTOR_LOCK_KEY = 0x7665_6374_6F72_7321 & 0x7FFF_FFFF_FFFF_FFFF  # "vectors!": vector_migration.py's copies


@contextlib.asynccontextmanager
async def advisory_lock(pool: asyncpg.Pool, key: int) -> AsyncIterator[None]:
    """Holds a PostgreSQL session advisory lock for the block (released too if this process dies)."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)


def _migration_files() -> list[tuple[int, str, str]]:
    files = importlib.resources.files("deeplens_server") / "migrations"
    found = []
    for entry in files.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Applies pending migrations; returns the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    # Migrations span tenants by nature: they run in the platform scope of row-level security.
    await conn.execute("SET deeplens.scope = 'platform'")
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_time timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            _log.info("applied migration %s", name)
            applied.append(name)
    finally:
        await conn.execute("RESET deeplens.scope")
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied
