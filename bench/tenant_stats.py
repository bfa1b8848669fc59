"""GetTenantStats and GetStorageReport against a tenant's size: the admin RPCs that sum over every image.

    .venv/bin/python bench/tenant_stats.py [--sizes 100000 1000000] [--operations 1000]

A few generated photos (the JPEGs of bench/ingest_throughput.py) go through the pipeline; the rest of the
tenant's images are *seeded* by SQL, each row a copy of a real one (so as wide: EXIF, hash variants, ...)
under a new name and content hash, every 50th image in a duplicate group with the next one. The tenant's
history is seeded too: ``--operations`` finished operations sharing one item per image, as UploadImages
batches leave them. A second tenant holds a tenth as many images, so every query has rows to skip.

At each size the RPCs are timed (median of 5) twice, as autovacuum would leave the tables: after an ANALYZE
(fresh planner statistics; autovacuum analyzes a table after a tenth of it changed), then after a VACUUM
(which marks the pages all-visible, so that PostgreSQL may answer from an index alone). Without the ANALYZE,
right after a bulk load, the planner takes the few duplicate groups it knows of for none and joins the images
to them in a nested loop: 3.5 s at 100k. For GetTenantStats the server's own breakdown follows (PostgreSQL
transactions, the vector count, the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from deeplens.client import DeepLensClient
from deeplens.v1 import resources_pb2
from deeplens_stack import Stack, StackConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_throughput import dataset
from server_metrics import breakdown, scrape, timed

TENANT, OTHER = "bench", "other"
COLLECTION = "photos"
CHUNK = 50_000
# The columns a seeded image copies from a real one.
_COPIED = (
    "storage_uri, format, width, height, model, tags, exif, thumbnails, location_id, detail_hash, "
    "hash_variants, phash_bands"
)


async def seed(dsn: str, tenant: str, start: int, stop: int, operations: int, total: int) -> None:
    """Images ``seed{start}`` .. ``seed{stop - 1}`` of ``tenant`` (copies of its first real image), their
    duplicate groups, and their items in ``operations`` finished operations of ``total`` items in all."""
    conn = await asyncpg.connect(dsn)
    try:
        per_op = max(1, -(-total // operations))
        for first in range(start, stop, CHUNK):
            last = min(stop, first + CHUNK)
            async with conn.transaction():
                await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", tenant)
                await conn.execute(
                    f"INSERT INTO images (tenant_id, collection_id, image_id, sha256, phash, dhash, size_bytes, "
                    f"group_id, {_COPIED}) "
                    f"SELECT $1, $2, 'seed' || lpad(g::text, 7, '0'), md5(g::text) || md5((-g)::text), "
                    "substr(md5(g::text), 1, 16), substr(md5((-g)::text), 1, 16), r.size_bytes + g % 997, "
                    "CASE WHEN g % 50 < 2 THEN 'seedgroup' || (g / 50)::text END, "
                    f"{', '.join('r.' + c for c in _COPIED.split(', '))} "
                    "FROM generate_series($3::int, $4::int - 1) g, "
                    "(SELECT * FROM images WHERE tenant_id = $1 AND image_id NOT LIKE 'seed%' "
                    " ORDER BY image_id LIMIT 1) r",
                    tenant,
                    COLLECTION,
                    first,
                    last,
                )
                await conn.execute(
                    "INSERT INTO duplicate_groups (tenant_id, id, members, total_bytes, reclaimable_bytes, "
                    "keeper_collection, keeper_image) "
                    "SELECT $1, 'seedgroup' || (g / 50)::text, 2, 0, 0, $2, 'seed' || lpad(g::text, 7, '0') "
                    "FROM generate_series($3::int, $4::int - 1) g WHERE g % 50 = 0",
                    tenant,
                    COLLECTION,
                    first,
                    last,
                )
                await conn.execute(
                    "INSERT INTO operations (tenant_id, id, kind, state, stage, total, processed, succeeded, "
                    "end_time) SELECT $1, 'seedop' || o::text, 'ingest_batch', $5, 'done', $4, $4, $4, now() "
                    "FROM generate_series($2::int / $4, ($3::int - 1) / $4) o ON CONFLICT DO NOTHING",
                    tenant,
                    first,
                    last,
                    per_op,
                    resources_pb2.OPERATION_STATE_SUCCEEDED,
                )
                await conn.execute(
                    "INSERT INTO operation_items (tenant_id, operation_id, item, state, source) "
                    "SELECT $1, 'seedop' || (g / $4)::text, g % $4, 3, '{}' "
                    "FROM generate_series($2::int, $3::int - 1) g",
                    tenant,
                    first,
                    last,
                    per_op,
                )
    finally:
        await conn.close()


async def maintain(dsn: str, command: str) -> float:
    """Seconds ``command`` (ANALYZE or VACUUM) took on the tables the RPCs read."""
    began = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"{command} images, duplicate_groups, operations, operation_items")
    finally:
        await conn.close()
    return time.perf_counter() - began


async def sizes(dsn: str) -> str:
    """The images table's rows and its indexes, in MB."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_class c "
            "WHERE c.oid = 'images'::regclass OR c.oid IN (SELECT indexrelid FROM pg_index "
            "WHERE indrelid = 'images'::regclass) ORDER BY c.relname"
        )
    finally:
        await conn.close()
    return ", ".join(f"{r['relname']} {r['bytes'] / 1e6:,.0f} MB" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--operations", type=int, default=1_000, help="finished operations holding the items")
    parser.add_argument("--port-base", type=int, default=46000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    paths = dataset(4)
    with tempfile.TemporaryDirectory(prefix="deeplens-stats-bench-") as tmp:
        stack = Stack(StackConfig(data_dir=Path(tmp) / "stack", port_base=args.port_base, durable=False))
        try:
            stack.up()
            dsn = stack.config.endpoints["DEEPLENS_POSTGRES_DSN"]
            metrics = stack.config.endpoints["DEEPLENS_METRICS_LISTEN"]
            with DeepLensClient(stack.config.grpc_target, api_key=stack.admin_key(), timeout=600) as admin:
                secrets = {}
                for tenant in (TENANT, OTHER):
                    admin.create_tenant(tenant)
                    _, secrets[tenant] = admin.create_api_key(tenant, resources_pb2.ROLE_EDITOR)
                    with DeepLensClient(stack.config.grpc_target, api_key=secrets[tenant], timeout=600) as editor:
                        parent = f"tenants/{tenant}/collections/{COLLECTION}"
                        editor.wait_operation(editor.upload_files(parent, [(p, p.stem) for p in paths]).name)
                client = DeepLensClient(stack.config.grpc_target, api_key=secrets[TENANT], timeout=600)
                seeded = 0
                for size in sorted(args.sizes):
                    began = time.perf_counter()
                    asyncio.run(seed(dsn, TENANT, seeded, size, args.operations, max(args.sizes)))
                    asyncio.run(seed(dsn, OTHER, seeded // 10, size // 10, args.operations, max(args.sizes) // 10))
                    print(f"\n{size:,} images seeded ({size // 10:,} for the other tenant) "
                          f"in {time.perf_counter() - began:.0f} s")  # fmt: skip
                    seeded = size
                    for command in ("ANALYZE", "VACUUM"):
                        when = f"after {command}"
                        print(f"{command} took {asyncio.run(maintain(dsn, command)):.1f} s")
                        before = scrape(metrics, "GetTenantStats")
                        stats = [timed(lambda: admin.get_tenant_stats(TENANT)) for _ in range(5)]
                        spent = breakdown(before, scrape(metrics, "GetTenantStats"), statistics.mean(stats))
                        report = [timed(lambda: client.get_storage_report(f"tenants/{TENANT}")) for _ in range(5)]
                        counted = admin.get_tenant_stats(TENANT)
                        print(f"{when}: GetTenantStats {statistics.median(stats):.0f} ms, GetStorageReport "
                              f"{statistics.median(report):.0f} ms (medians of 5; {counted.images:,} images, "
                              f"{counted.duplicate_groups:,} groups)")  # fmt: skip
                        print(f"  GetTenantStats: {spent}")
                    print("sizes: " + asyncio.run(sizes(dsn)))
        finally:
            stack.destroy()


if __name__ == "__main__":
    main()
