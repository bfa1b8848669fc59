"""Search latency and throughput end to end over gRPC at 10k and 100k indexed images (Milvus Lite by default,
a real Milvus standalone server with ``DEEPLENS_STACK_MILVUS=standalone``), with the server's memory.

    .venv/bin/python bench/search_scale.py [--sizes 10000 100000] [--real 300] [--queries 200]
    DEEPLENS_STACK_MILVUS=standalone .venv/bin/python bench/search_scale.py --sizes 100000 1000000

How the index is filled. ``--real`` generated photos (the 1-2 MP JPEGs of bench/ingest_throughput.py) go
through UploadImages and the whole pipeline. The rest are *seeded*: this script writes their rows into
PostgreSQL (one COPY per batch, scoped to the tenant like the server's own writes) and their vectors through
DeepLens's own ``VectorIndex`` (both collections, batches of 500). Each seeded image copies a real image's
metadata under a new name and content hash, and its embedding and colour signature are that image's moved by
Gaussian noise (cosine to it spread over ~0.45-0.9), so the index holds clusters of look-alikes the way a
photo library does. Ingesting 100k images through the pipeline would take hours on 2 cores; a search reads
nothing that only ingest writes (thumbnails, duplicate links), so the seeded rows serve it like real ones.

At each size: single searches one at a time, the ways taking turns — by image bytes (a real photo: decode,
embed on Triton, ANN query, rows from PostgreSQL), by image name (any image, seeded ones included: its stored
vector, the ANN query, rows), and by the bytes of a photo never ingested (``--unseen``: a real photo's vector is
the centre that ~1/300 of the seeded images crowd around; an unseen photo's is no cluster's centre) —
p50/p95/p99 over ``--queries``, and where the server's time went (means per search, from its /metrics: Triton,
Milvus search and query, PostgreSQL transactions, the rest); then ``--threads`` clients at once for
``--seconds`` by bytes and by name (searches/s and that phase's latency percentiles); peak RSS of the server and
of the vector engine throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from deeplens.client import DeepLensClient, operation_metadata
from deeplens.v1 import resources_pb2
from deeplens_server.imaging import phash_bands
from deeplens_server.vectors import GRPC_OPTIONS, VectorIndex, VectorRecord, colour_collection_name
from deeplens_stack import Stack, StackConfig
from pymilvus import AsyncMilvusClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_throughput import dataset, quiet, rss_mb
from server_metrics import breakdown, percentiles, scrape, timed
from vector_scale import served, stable

TENANT = "bench"
COLLECTION = "photos"
PARENT = f"tenants/{TENANT}/collections/{COLLECTION}"
BATCH = 500
NEW = "by bytes, unseen"
_COPIED = "storage_uri, format, width, height, size_bytes, model, tags, exif, thumbnails, location_id, hash_variants"


def _unit(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


async def seed(stack: Stack, start: int, stop: int, rng: np.random.Generator) -> float:
    """Seeded images ``seed{start}`` .. ``seed{stop - 1}``; returns the seconds it took."""
    endpoints = stack.config.endpoints
    began = time.perf_counter()
    conn = await asyncpg.connect(endpoints["DEEPLENS_POSTGRES_DSN"])
    index = VectorIndex(endpoints["DEEPLENS_MILVUS_URI"], token="")
    await index.open()
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", TENANT)
            real = await conn.fetch(
                f"SELECT image_id, {_COPIED} FROM images WHERE tenant_id = $1 AND image_id NOT LIKE 'seed%' "
                "ORDER BY image_id",
                TENANT,
            )
        model = str(real[0]["model"])
        keys = [(COLLECTION, str(r["image_id"])) for r in real]
        embeddings = await index.get_vectors(TENANT, keys, model=model)
        colours = await index.get_vectors(TENANT, keys, model=model, signal="colour")
        sources = [(r, embeddings[k], colours[k]) for r, k in zip(real, keys, strict=True)]
        columns = ["tenant_id", "collection_id", "image_id", "sha256", "phash", "dhash", "detail_hash",
                   "phash_bands", *_COPIED.split(", ")]  # fmt: skip
        values = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        insert = f"INSERT INTO images ({', '.join(columns)}) VALUES ({values})"
        for first in range(start, stop, BATCH):
            rows, vectors = [], []
            for i in range(first, min(stop, first + BATCH)):
                row, embedding, colour = sources[int(rng.integers(len(sources)))]
                name = f"seed{i:07d}"
                sha = hashlib.sha256(name.encode()).hexdigest()
                phash, dhash = (f"{int(rng.integers(1 << 63)):016x}" for _ in range(2))
                detail = f"{int(rng.integers(1 << 63)):016x}" * 8
                rows.append((TENANT, COLLECTION, name, sha, phash, dhash, detail, phash_bands(phash),
                             *(row[c] for c in _COPIED.split(", "))))  # fmt: skip
                spread = float(rng.uniform(0.5, 2.0))
                moved = _unit(embedding + spread * _unit(rng.normal(size=embedding.shape)))
                tint = _unit(np.abs(colour + 0.3 * _unit(rng.normal(size=colour.shape))))
                fields = {"sha256": sha, "phash": phash, "dhash": dhash, "detail": detail,
                          "location_id": row["location_id"], "format": row["format"], "width": row["width"],
                          "height": row["height"], "create_ts": int(time.time()),
                          "tags": list(row["tags"])}  # fmt: skip
                vectors.append(VectorRecord(COLLECTION, name, moved, tint, fields))
            async with conn.transaction():
                await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", TENANT)
                # No COPY: PostgreSQL refuses it on a table with row-level security.
                await conn.executemany(insert, rows)
            await index.upsert(TENANT, model, vectors)
    finally:
        await index.close()
        await conn.close()
    return time.perf_counter() - began


def concurrent(calls: Callable[[int], Callable[[], object]], threads: int, seconds: float) -> tuple[float, list[float]]:
    """(searches/s, latencies) of ``threads`` clients searching for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    deadline = time.perf_counter() + seconds

    def run(n: int) -> None:
        i = n
        while time.perf_counter() < deadline:
            latencies[n].append(timed(calls(i)))
            i += threads

    began = time.perf_counter()
    pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    flat = [x for part in latencies for x in part]
    return len(flat) / (time.perf_counter() - began), flat


async def settle(stack: Stack, rows: int = 0, quiet_s: float = 0) -> float:
    """A Milvus server: waits until every collection's rows are indexed and no rebuild is pending; with
    ``rows``, until that many rows are in sealed segments; with ``quiet_s``, until each collection's served
    segments have stayed the same for that long, so that no merge or re-index runs beside the searches
    (seconds)."""
    uri = stack.config.endpoints["DEEPLENS_MILVUS_URI"]
    client = AsyncMilvusClient(uri=uri, grpc_options=GRPC_OPTIONS)
    began = time.perf_counter()
    try:
        colours = colour_collection_name()
        fields = {name: "colour" if name == colours else "embedding" for name in await client.list_collections()}
        for name, field in fields.items():
            while True:
                state = await client.describe_index(name, field)
                built = int(state.get("indexed_rows", 0)) >= int(state.get("total_rows", 0))
                if built and not int(state.get("pending_index_rows", 0)):
                    break
                await asyncio.sleep(5)
        for name in fields:
            await asyncio.to_thread(served, uri, name, 1800, rows)
        if quiet_s:
            for name, field in fields.items():
                await asyncio.to_thread(stable, uri, name, quiet_s, field)
    finally:
        await client.close()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--real", type=int, default=300, help="images ingested through the pipeline")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--unseen", type=int, default=30,
        help="generated photos never ingested, searched by bytes as a third way (0: none)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--port-base", type=int, default=45000)
    parser.add_argument(
        "--sealed", action="store_true",
        help="measure once more after every row is in a sealed, indexed segment (a segment seals when full or "
        "when idle for dataCoord.segment.maxIdleTime); on Milvus Lite, once its background merges and index "
        "builds are over (the engine idle for --settle-s)",
    )  # fmt: skip
    parser.add_argument(
        "--settle-s", type=float, default=180.0,
        help="with --sealed, also wait until every collection's served segments have stayed the same this long "
        "(the tail merge and its re-index are over); 0: do not wait",
    )  # fmt: skip
    args = parser.parse_args()
    engine = os.environ.get("DEEPLENS_STACK_MILVUS", "lite")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"vector engine: {engine}")  # fmt: skip
    paths = dataset(args.real)
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory(prefix="deeplens-search-bench-") as tmp:
        stack = Stack(StackConfig(data_dir=Path(tmp) / "stack", port_base=args.port_base, durable=False))
        try:
            stack.up()
            server = stack.procs.get("server")
            milvus = stack.procs.get("milvus")
            assert server is not None
            assert milvus is not None
            peak = {"server": 0.0, "vector engine": 0.0}
            stop_sampling = threading.Event()

            def sample() -> None:
                while not stop_sampling.is_set():
                    peak["server"] = max(peak["server"], rss_mb(server.pid))
                    peak["vector engine"] = max(peak["vector engine"], rss_mb(milvus.pid))
                    time.sleep(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            with DeepLensClient(stack.config.grpc_target, api_key=stack.admin_key()) as admin:
                limits = resources_pb2.TenantLimits(requests_per_second=100_000, max_image_bytes=64 << 20)
                admin.create_tenant(TENANT, limits=limits)
                _, secret = admin.create_api_key(TENANT, resources_pb2.ROLE_EDITOR)
            with DeepLensClient(stack.config.grpc_target, api_key=secret, timeout=600) as client:

                def measure(ways: dict[str, Callable[[int], Callable[[], object]]]) -> None:
                    metrics = stack.config.endpoints["DEEPLENS_METRICS_LISTEN"]
                    single: dict[str, list[float]] = {what: [] for what in ways}
                    last = scrape(metrics)
                    spent = {what: dict.fromkeys(last, (0.0, 0.0)) for what in ways}
                    for i in picks:  # the ways take turns, so that each meets the engine in the same state
                        for what, make in ways.items():
                            single[what].append(timed(make(i)))
                            now = scrape(metrics)  # the server's time between two scrapes is this one search's
                            spent[what] = {k: (t + now[k][0] - last[k][0], n + now[k][1] - last[k][1])
                                           for k, (t, n) in spent[what].items()}  # fmt: skip
                            last = now
                    zero = dict.fromkeys(last, (0.0, 0.0))
                    for what in ways:
                        print(f"  search {what}, one at a time:  {percentiles(single[what])}")
                        print(f"    {breakdown(zero, spent[what], statistics.mean(single[what]))}")
                    for what, make in ways.items():
                        if what == NEW:
                            continue  # the same path as by bytes; its single searches are what differ
                        rate, spread = concurrent(make, args.threads, args.seconds)
                        print(f"  search {what}, {args.threads} clients: {rate:6.1f} searches/s; {percentiles(spread)}")
                    print("  peak RSS so far: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in peak.items()))
                    before = scrape(metrics, "GetTenantStats")
                    stats = [timed(lambda: client.get_tenant_stats(TENANT)) for _ in range(3)]
                    spent = breakdown(before, scrape(metrics, "GetTenantStats"), statistics.mean(stats))
                    counted = client.get_tenant_stats(TENANT)
                    print(f"  GetTenantStats: {statistics.median(stats):.0f} ms (median of 3; "
                          f"{counted.images:,} images, {counted.vectors:,} vectors)")  # fmt: skip
                    print(f"    {spent}")

                t = time.perf_counter()
                op = client.wait_operation(client.upload_files(PARENT, [(p, p.stem) for p in paths]).name)
                meta = operation_metadata(op)
                print(f"{meta.succeeded} photos ingested through the pipeline in {time.perf_counter() - t:.0f} s")
                contents = [p.read_bytes() for p in paths]
                unseen = [p.read_bytes() for p in dataset(args.real + args.unseen)[args.real :]]
                indexed = meta.succeeded
                for size in sorted(args.sizes):
                    if size > indexed:
                        took = asyncio.run(seed(stack, indexed - meta.succeeded, size - meta.succeeded, rng))
                        print(f"\n{size - indexed:,} images seeded in {took:.0f} s "
                              f"({(size - indexed) / took:,.0f} images/s)")  # fmt: skip
                        indexed = size
                        if stack.config.milvus_engine == "standalone":
                            waited = asyncio.run(settle(stack))
                            print(f"no index work pending {waited:.0f} s later (measured settled)")
                    names = [f"{PARENT}/images/{p.stem}" for p in paths]
                    names += [f"{PARENT}/images/seed{i:07d}" for i in range(indexed - meta.succeeded)]
                    picks = [int(i) for i in rng.integers(0, 1 << 30, args.queries)]

                    def by_bytes(i: int) -> Callable[[], object]:
                        return lambda: client.search_images(PARENT, image_content=contents[i % len(contents)])

                    def by_name(i: int, names: list[str] = names) -> Callable[[], object]:
                        return lambda: client.search_images(PARENT, image_name=names[i % len(names)])

                    def by_new(i: int) -> Callable[[], object]:
                        return lambda: client.search_images(PARENT, image_content=unseen[i % len(unseen)])

                    ways = {"by bytes": by_bytes, "by name ": by_name}
                    if unseen:
                        ways[NEW] = by_new
                    by_name(0)()  # the first query after a load waits for the engine to catch up
                    print(f"at {indexed:,} images (top 10):")
                    measure(ways)
                    if args.sealed and stack.config.milvus_engine == "standalone":
                        waited = asyncio.run(settle(stack, rows=indexed, quiet_s=args.settle_s))
                        print(f"at {indexed:,} images, every row sealed and indexed, the segments unchanged for "
                              f"{args.settle_s:.0f} s ({waited:.0f} s later):")  # fmt: skip
                        measure(ways)
                    elif args.sealed:
                        waited, settled = quiet([milvus.pid], args.settle_s)
                        state = "over" if settled else "NOT over"
                        print(f"at {indexed:,} images, Milvus Lite's merges and index builds {state}: the engine "
                              f"under 5 % of a core for {args.settle_s:.0f} s ({waited:.0f} s later):")  # fmt: skip
                        measure(ways)
            stop_sampling.set()
            sampler.join()
        finally:
            stack.destroy()


if __name__ == "__main__":
    main()
