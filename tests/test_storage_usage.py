"""The storage figures (GetStorageReport, GetTenantStats) read in one pass over PostgreSQL equal the sums of the
rows they describe: by storage location, by collection, for one collection, with resolved groups freeing
nothing and keepers never counted as reclaimable."""

from __future__ import annotations

import asyncpg
import pytest
from deeplens.client import DeepLensClient
from deeplens.v1 import search_service_pb2
from deeplens_server import duplicate_store
from deeplens_server.duplicate_store import Usage
from deeplens_stack import Stack

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack

# (collection, image, location, bytes, group); groups: g1 unresolved (keeper lib/a), g2 resolved (keeper x/e).
IMAGES = [
    ("lib", "a", "", 100, "g1"),
    ("lib", "b", "nas", 200, "g1"),
    ("x", "c", "nas", 300, "g1"),
    ("x", "d", "bucket", 400, None),
    ("x", "e", "bucket", 500, "g2"),
    ("lib", "f", "", 600, "g2"),
    ("zeta", "g", "nas", 700, None),
]
GROUPS = [("g1", False, "lib", "a"), ("g2", True, "x", "e")]


def expected(rows: list[tuple[str, str, str, int, str | None]], key: str) -> Usage:
    keepers = {g: (c, i) for g, _, c, i in GROUPS}
    resolved = {g for g, r, _, _ in GROUPS if r}
    return Usage(
        key,
        len(rows),
        sum(r[3] for r in rows),
        sum(1 for r in rows if r[4] is not None),
        sum(r[3] for r in rows if r[4] is not None and r[4] not in resolved and keepers[r[4]] != (r[0], r[1])),
    )


async def test_storage_usage_equals_the_sums_of_its_rows(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, client = new_tenant(admin, connect)
    other, _ = new_tenant(admin, connect)
    conn = await asyncpg.connect(stack.config.endpoints["DEEPLENS_POSTGRES_DSN"])
    try:
        for owner in (tenant, other):  # the other tenant's identical rows must count for nothing here
            async with conn.transaction():
                await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", owner)
                for group, resolved, keeper_c, keeper_i in GROUPS:
                    await conn.execute(
                        "INSERT INTO duplicate_groups (tenant_id, id, members, total_bytes, reclaimable_bytes, "
                        "resolved, keeper_collection, keeper_image) VALUES ($1, $2, 0, 0, 0, $3, $4, $5)",
                        owner, group, resolved, keeper_c, keeper_i,
                    )  # fmt: skip
                await conn.executemany(
                    "INSERT INTO images (tenant_id, collection_id, image_id, sha256, storage_uri, format, width, "
                    "height, size_bytes, phash, dhash, model, location_id, group_id) "
                    "VALUES ($1, $2, $3, $3, '', 'JPEG', 1, 1, $4, '', '', 'm', $5, $6)",
                    [(owner, c, i, size, loc, g) for c, i, loc, size, g in IMAGES],
                )
        async with conn.transaction():
            await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", tenant)
            total, by_location, by_collection = await duplicate_store.storage_usage(conn, tenant, None)
            assert total == expected(IMAGES, "")
            assert total == await duplicate_store.storage_total(conn, tenant, None)
            assert by_location == [expected([r for r in IMAGES if r[2] == k], k) for k in ("", "bucket", "nas")]
            assert by_collection == [expected([r for r in IMAGES if r[0] == k], k) for k in ("lib", "x", "zeta")]
            assert total.reclaimable_bytes == 200 + 300  # g1 but its keeper; g2 is resolved

            x_total, x_by_location, x_by_collection = await duplicate_store.storage_usage(conn, tenant, "x")
            x_rows = [r for r in IMAGES if r[0] == "x"]
            assert x_total == expected(x_rows, "") == await duplicate_store.storage_total(conn, tenant, "x")
            assert x_by_location == [expected([r for r in x_rows if r[2] == k], k) for k in ("bucket", "nas")]
            assert x_by_collection == [expected(x_rows, "x")]

            empty = await duplicate_store.storage_usage(conn, tenant, "none")
            assert empty == (Usage("", 0, 0, 0, 0), [], [])
    finally:
        await conn.close()

    report = client.search.GetStorageReport(
        search_service_pb2.GetStorageReportRequest(parent=f"tenants/{tenant}"), metadata=client.metadata
    )
    assert (report.total.images, report.total.bytes, report.total.reclaimable_bytes) == (7, 2800, 500)
    assert [u.key for u in report.by_storage_location] == [
        "uploads",
        f"tenants/{tenant}/storageLocations/bucket",
        f"tenants/{tenant}/storageLocations/nas",
    ]
    stats = client.get_tenant_stats(tenant)
    assert (stats.images, stats.bytes, stats.duplicate_images, stats.reclaimable_bytes) == (7, 2800, 5, 500)
