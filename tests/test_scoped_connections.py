"""The server's PostgreSQL transactions: ``BEGIN`` and the tenant's scope go in one message whatever the tenant's
string holds, an error rolls the transaction back, and a connection returns to the pool without the reset query
only when its last use was one scoped transaction — any other use is reset in full."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from deeplens_server.db import scoped, sql_literal
from deeplens_server.repository import Repository
from deeplens_stack import Stack

pytestmark = pytest.mark.stack

AWKWARD = ["plain", "o'brien", "back\\slash\\'", "x', true); SELECT set_config('deeplens.scope', 'platform', true); --"]


async def _repository(stack: Stack) -> Repository:
    return await Repository.connect(stack.config.endpoints["DEEPLENS_POSTGRES_DSN"], max_size=1)


async def test_any_tenant_string_is_the_scope_and_nothing_more(stack: Stack) -> None:
    repo = await _repository(stack)
    try:
        for tenant in [*AWKWARD, "ünïcødé"]:
            async with scoped(repo.pool, tenant) as conn:
                assert await conn.fetchval("SELECT current_setting('deeplens.tenant')") == tenant
                assert await conn.fetchval("SELECT current_setting('deeplens.scope', true)") in (None, "")
                assert await conn.fetchval("SELECT count(*) FROM images") == 0  # no tenant of that name
        async with scoped(repo.pool, None) as conn:
            assert await conn.fetchval("SELECT current_setting('deeplens.scope')") == "platform"
        async with repo.pool.acquire() as conn:
            for conforming in ("on", "off"):  # the constant reads the same under either string syntax
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL standard_conforming_strings = {conforming}")
                    for tenant in AWKWARD:
                        assert await conn.fetchval(f"SELECT {sql_literal(tenant)}") == tenant
    finally:
        await repo.close()
    with pytest.raises(ValueError, match="NUL"):
        sql_literal("a\x00b")


async def test_an_error_rolls_the_scoped_transaction_back(stack: Stack) -> None:
    repo = await _repository(stack)
    tenant = "scoped-rollback"
    try:
        async with scoped(repo.pool, None) as conn:
            await conn.execute("INSERT INTO tenants (id, display_name) VALUES ($1, $1) ON CONFLICT DO NOTHING", tenant)

        async def insert_then(fail: str) -> None:
            async with scoped(repo.pool, tenant) as conn:
                await conn.execute("INSERT INTO collections (tenant_id, id) VALUES ($1, 'kept?')", tenant)
                if fail == "raise":
                    raise RuntimeError("midway")
                await conn.execute("INSERT INTO collections (tenant_id, id) VALUES ($1, 'kept?')", tenant)

        with pytest.raises(RuntimeError, match="midway"):
            await insert_then("raise")
        with pytest.raises(asyncpg.UniqueViolationError):  # a failed statement: rolled back the same way
            await insert_then("a statement fails")
        async with scoped(repo.pool, tenant) as conn:  # the pool's one connection, usable and clean
            assert await conn.fetchval("SELECT count(*) FROM collections") == 0
        async with scoped(repo.pool, None) as conn:
            await conn.execute("DELETE FROM tenants WHERE id = $1", tenant)
    finally:
        await repo.close()


async def test_only_a_scoped_use_skips_the_reset_query(stack: Stack) -> None:
    repo = await _repository(stack)
    sent: list[str] = []

    def log(record: Any) -> None:
        sent.append(record.query)

    try:
        async with repo.pool.acquire() as conn:  # max_size=1: every acquire below gets this connection
            reset_query = conn.get_reset_query()
            conn.add_query_logger(log)
        assert reset_query
        assert sent == [reset_query]  # that acquire was not a scoped transaction: reset in full
        sent.clear()

        async with scoped(repo.pool, "tenant-a") as conn:
            await conn.fetchval("SELECT 1")
        assert sent == [
            "BEGIN; SELECT set_config('deeplens.tenant', E'tenant-a', true)",
            "SELECT 1",
            "COMMIT",
        ]  # and no reset query on the way back to the pool

        sent.clear()
        async with repo.pool.acquire() as conn:  # not scoped: session state, which the reset must clear
            await conn.execute("SELECT set_config('deeplens.tenant', 'leaked', false)")
            await conn.execute("SELECT pg_advisory_lock(4242)")
        assert sent[-1] == reset_query
        async with repo.pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_setting('deeplens.tenant', true)") in (None, "")
            locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242"
            assert await conn.fetchval(locks) == 0

        sent.clear()
        async with scoped(repo.pool, "tenant-b") as conn:  # scoped again after a full reset: skipped again
            await conn.fetchval("SELECT 2")
        assert reset_query not in sent
        assert sent[-1] == "COMMIT"
    finally:
        await repo.close()
