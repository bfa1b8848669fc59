"""PostgreSQL enforces tenant isolation too: with row-level security, a query that forgets its tenant filter
still sees only the rows of the tenant its transaction is scoped to — and none without a scope."""

from __future__ import annotations

import asyncpg
import pytest
from deeplens.client import DeepLensClient
from deeplens_stack import Stack

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack


async def test_unfiltered_queries_see_only_the_scoped_tenant(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant_a, a = new_tenant(admin, connect)
    tenant_b, b = new_tenant(admin, connect)
    for client, tenant, photo in ((a, tenant_a, photos["coffee"]), (b, tenant_b, photos["rocket"])):
        for image_id in ("one", "two"):  # the same bytes twice: a duplicate link and a group in each tenant
            op = client.ingest_image(f"tenants/{tenant}/collections/c", photo, image_id=image_id)
            client.wait_operation(op.name, timeout=120)

    conn = await asyncpg.connect(stack.config.endpoints["DEEPLENS_POSTGRES_DSN"])  # the application's own role
    try:
        role = await conn.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert role is not None
        assert (role["rolsuper"], role["rolbypassrls"]) == (False, False)

        # Every table that holds a tenant's rows is under a policy its owner cannot escape either.
        tables = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace "
                "AND (c.relname = 'tenants' OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid "
                "AND a.attname = 'tenant_id' AND NOT a.attisdropped))"
            )
        }
        assert {"images", "operation_items", "duplicate_groups", "storage_objects"} <= tables
        exposed = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relname = ANY($1::text[]) AND relnamespace = 'public'::regnamespace "
            "AND NOT (relrowsecurity AND relforcerowsecurity AND EXISTS "
            "(SELECT 1 FROM pg_policies p WHERE p.tablename = relname AND p.policyname = 'tenant_isolation'))",
            sorted(tables),
        )
        assert [r["relname"] for r in exposed] == []
        for table in sorted(tables):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table  # no scope: nothing

        async with conn.transaction():
            await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", tenant_a)
            owners = {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM images")}
            assert owners == {tenant_a}
            for table in ("duplicate_links", "duplicate_groups"):
                assert {r["tenant_id"] for r in await conn.fetch(f"SELECT tenant_id FROM {table}")} == {tenant_a}
            assert {r["id"] for r in await conn.fetch("SELECT id FROM tenants")} == {tenant_a}
            assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE tenant_id IS NULL") == 0
            # Writing a row for another tenant is refused by the policy's WITH CHECK.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO collections (tenant_id, id) VALUES ($1, 'planted')", tenant_b)
            # Updating the other tenant's rows touches nothing.
            assert await conn.execute("UPDATE images SET tags = '{hijacked}'") == "UPDATE 2"

        async with conn.transaction():
            await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", tenant_b)
            tags = [r["tags"] for r in await conn.fetch("SELECT tags FROM images")]
            assert tags == [[], []]
            # Read by a parallel worker (the policies allow parallel plans), the scope holds there too.
            await conn.execute("SET LOCAL debug_parallel_query = on")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN SELECT tenant_id FROM images"))
            assert "Gather" in plan
            assert {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM images")} == {tenant_b}

        async with conn.transaction():  # the platform scope sees every tenant's rows
            await conn.execute("SELECT set_config('deeplens.scope', 'platform', true)")
            owners = {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM images")}
            assert {tenant_a, tenant_b} <= owners
    finally:
        await conn.close()
