"""Vector search at scale through DeepLens's own storage module (``deeplens_server.vectors.VectorIndex``):
Milvus Lite against a real Milvus standalone server, same schema (1280-d, HNSW M=16, efConstruction=200,
tenant partition key), same queries.

    .venv/bin/python bench/vector_scale.py --engine standalone --vectors 100000
    .venv/bin/python bench/vector_scale.py --engine lite --vectors 20000
    .venv/bin/python bench/vector_scale.py --engine standalone --vectors 1000000 --tenants 1 --batch 2000 --settle \\
        --segment-mb 512 --set dataCoord.segment.maxBinlogFileNumber=32

Prints: load rate through ``VectorIndex.upsert`` (``--batch`` rows of one tenant a call) and the engine's CPU time a
vector meanwhile, time until the index covers every row (``indexed_rows``; the server may go on merging small
segments and indexing them again, which ``--settle`` waits out; ``--index-after-load`` builds the index once the
load is flushed; ``--attach URI`` measures a server an earlier run loaded, whose dataset it generates again from the
same seed), search latency p50/p95/p99 (one tenant-filtered query at a time, top 10, the way SearchImages asks; a
search visits every segment of the tenant's partition, so ``--tenants 1`` and ``--segment-mb`` show what segment
size costs), the throughput of 8 concurrent searchers, the latency of queries near a stored point against queries at
a cluster's centre (alternating), recall@10 of both against exact search within the tenant, and the engine's RSS.
Vectors (``--data``): L2-normalised points around 2,000 random centres (photos cluster; uniform noise would
flatter HNSW), or ``photos``: search_scale.py's seeded look-alikes, crowded in one cone as CNN features are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import MilvusClient, connections, utility
from pymilvus.client.types import SegmentState

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "deploy" / "embedded")]

from deeplens_server.vectors import GRPC_OPTIONS, VectorIndex, VectorRecord  # noqa: E402
from deeplens_stack import milvus_server  # noqa: E402
from deeplens_stack.stack import MILVUS_LITE_MEMTABLE_BYTES  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_throughput import cpu_seconds, rss_mb  # noqa: E402
from milvus_metrics import Traced, cpu, grew, report, scrape  # noqa: E402
from server_metrics import percentiles  # noqa: E402

warnings.filterwarnings("ignore", message=".*ORM-style")  # segment info has no MilvusClient call yet
MODEL = "bench@1"
DIM = 1280
PORT_BASE = 48000


def _oldest(pattern: str) -> int:
    return int(subprocess.run(["pgrep", "-of", pattern], capture_output=True, text=True).stdout.split()[0])


def start(engine: str, home: Path, settings: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = PORT_BASE + 530
    if engine == "standalone":
        binary = milvus_server.binaries(ROOT / ".cache")
        config = milvus_server.write_config(home, proxy_port=port, port_base=PORT_BASE)
        text = (config / "milvus.yaml").read_text()
        for path, value in settings.items():  # other settings than the embedded server's
            text = milvus_server.set_value(text, path, value)
        (config / "milvus.yaml").write_text(text)
        env = milvus_server.environment(dict(os.environ), binary, home, PORT_BASE + milvus_server.METRICS_OFFSET)
        proc = subprocess.Popen([str(binary), "run", "standalone"], cwd=home, env=env,
                                stdout=(home / "out.log").open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        health = f"http://127.0.0.1:{PORT_BASE + milvus_server.METRICS_OFFSET}/healthz"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if b"OK" in urllib.request.urlopen(health, timeout=2).read():
                    break
            except OSError:
                time.sleep(0.5)
    else:
        env = {**os.environ, "MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES": str(MILVUS_LITE_MEMTABLE_BYTES)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "deeplens_stack.lite_server", "server", "--data-dir", str(home), "--host",
             "127.0.0.1", "--port", str(port), "--max-workers", "64"],
            env=env, stdout=(home / "out.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        time.sleep(3)
    return proc, f"http://127.0.0.1:{port}"


def dataset(n: int, tenants: int, seed: int = 0, kind: str = "centres") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` unit vectors, the tenant of each, and the centres they were drawn around (unit length). ``centres``:
    points around 2,000 random centres. ``photos``: search_scale.py's seeding: 300 source vectors that share a
    common non-negative part (mean cosine between two ~0.7, as pooled CNN features of unrelated photos are alike),
    each point a source moved by Gaussian noise (cosine to it ~0.45-0.9). The second is the harder one for an IVF
    index: its points crowd one cone."""
    rng = np.random.default_rng(seed)
    if kind == "photos":
        common = np.maximum(rng.standard_normal(DIM), 0) ** 2
        sources = np.maximum(rng.standard_normal((300, DIM)), 0) ** 2
        sources /= np.linalg.norm(sources, axis=1, keepdims=True)
        centres = sources + 1.2 * common / np.linalg.norm(common)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    else:
        centres = rng.standard_normal((2000, DIM))
    centres = centres.astype(np.float32)
    which = rng.integers(0, len(centres), n)
    vectors = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, 50_000):  # in slices: a million 1280-d vectors are 5 GB, without a second copy
        hi = min(n, lo + 50_000)
        noise = rng.standard_normal((hi - lo, DIM)).astype(np.float32)
        if kind == "photos":
            noise *= (rng.uniform(0.5, 2.0, (hi - lo, 1)) / np.linalg.norm(noise, axis=1, keepdims=True)).astype(
                np.float32
            )
        else:
            noise *= 0.6
        vectors[lo:hi] = centres[which[lo:hi]] + noise
        vectors[lo:hi] /= np.linalg.norm(vectors[lo:hi], axis=1, keepdims=True)
    owner = rng.integers(0, tenants, n)
    return vectors, owner, centres / np.linalg.norm(centres, axis=1, keepdims=True)


def _record(i: int, vector: np.ndarray) -> VectorRecord:
    fields = {"sha256": f"{i:064x}", "phash": "0" * 16, "dhash": "0" * 16, "detail": "", "location_id": "",
              "format": "JPEG", "width": 1200, "height": 900, "create_ts": i, "tags": []}  # fmt: skip
    return VectorRecord("c", f"i{i}", vector, np.zeros(64, dtype=np.float32), fields)


def _drop_index(uri: str, name: str) -> None:
    client = MilvusClient(uri=uri, grpc_options=GRPC_OPTIONS)
    client.release_collection(name)
    client.drop_index(name, "embedding")
    client.close()


def _create_index(uri: str, name: str, ef_construction: int) -> None:
    client = MilvusClient(uri=uri, grpc_options=GRPC_OPTIONS)
    params = client.prepare_index_params()
    params.add_index("embedding", index_type="HNSW", metric_type="COSINE",
                     params={"M": 16, "efConstruction": ef_construction})  # fmt: skip
    client.create_index(name, params)
    client.close()


@contextmanager
def _query_segments(uri: str, name: str, alias: str) -> Iterator[Callable[[], list[Any]]]:
    """A call listing the segments the query node serves for collection ``name`` (growing ones are not listed)."""
    connections.connect(alias=alias, uri=uri)
    try:
        yield lambda: list(utility.get_query_segment_info(name, using=alias))
    finally:
        connections.disconnect(alias)


def served(uri: str, name: str, timeout: float = 600, rows: int = 0) -> None:
    """Waits until the query node serves every segment of collection ``name`` sealed and indexed, and ``rows``
    rows in them (growing segments are not listed), at most ``timeout`` seconds; prints their sizes."""
    deadline = time.monotonic() + timeout
    with _query_segments(uri, name, "served") as listed:
        while True:
            segments = listed()
            waiting = [s for s in segments if s.state != SegmentState.Sealed or not s.index_name]
            short = sum(s.num_rows for s in segments) < rows
            if (not waiting and not short) or time.monotonic() > deadline:
                break
            time.sleep(5)
    rows = sorted(s.num_rows for s in segments)
    print(f"{name}: the query node serves {len(segments)} segments ({len(waiting)} not yet sealed and indexed), "
          f"rows {rows}")  # fmt: skip


def stable(uri: str, name: str, quiet_s: float, field: str = "embedding") -> float:
    """Waits until the query node has served the same segments, all indexed on ``field``, for ``quiet_s``
    seconds; returns the seconds waited. Once the last index is built, the data coordinator's next compaction
    round merges a partition's small last segment into another one, whose index is then built again: searches
    measured meanwhile share the 2 cores with that merge and build."""
    client = MilvusClient(uri=uri, grpc_options=GRPC_OPTIONS)
    began = time.monotonic()
    try:
        with _query_segments(uri, name, "stable") as listed:
            seen: frozenset[int] = frozenset()
            since = time.monotonic()
            while time.monotonic() - since < quiet_s:
                now = frozenset(s.segmentID for s in listed())
                pending = int(client.describe_index(name, field).get("pending_index_rows", 0))
                if now != seen or pending:
                    seen, since = now, time.monotonic()
                time.sleep(5)
    finally:
        client.close()
    return time.monotonic() - began


def _load(uri: str, name: str) -> None:
    client = MilvusClient(uri=uri, grpc_options=GRPC_OPTIONS)
    client.load_collection(name, timeout=3600)
    client.close()


async def run(args: argparse.Namespace) -> None:
    if args.attach:  # a server a run before loaded (the dataset is generated again, same seed)
        home, proc, uri = None, None, args.attach
    else:
        home = Path(tempfile.mkdtemp(prefix=f"vector-scale-{args.engine}-"))
        settings = dict(item.split("=", 1) for item in args.set)
        if args.segment_mb:
            settings["dataCoord.segment.maxSize"] = str(args.segment_mb)
        proc, uri = start(args.engine, home, settings)
        print(f"engine data: {home}")
    try:
        index = VectorIndex(uri, token="")
        await index.open()
        await index.ensure(MODEL, DIM)
        name = index.collection(MODEL)
        vectors, owner, centres = dataset(args.vectors, args.tenants, kind=args.data)
        client = index._client
        assert client is not None
        pid = proc.pid if proc is not None else _oldest("milvus run")
        if not args.attach:
            cpu = cpu_seconds(pid)
            await load(args, index, uri, name, vectors, owner)
            print(f"engine CPU during the load: {(cpu_seconds(pid) - cpu) / len(vectors) * 1000:.2f} ms a vector")
        started = time.perf_counter()
        if args.engine == "standalone" and args.no_flush:  # the partly filled segment stays growing
            print("not flushed: rows past the last sealed segment are searched in a growing segment")
        elif args.engine == "standalone":
            if args.index_after_load and not args.attach:
                await asyncio.to_thread(_create_index, uri, name, args.ef_construction)
            while True:  # every row in an indexed segment (compaction may go on merging segments and indexing them)
                described = await client.describe_index(name, "embedding")
                if int(described.get("indexed_rows", 0)) >= len(vectors):
                    break
                await asyncio.sleep(1)
            pending = int(described.get("pending_index_rows", 0))
            print(f"indexed_rows covers every row after {time.perf_counter() - started:.1f} s more; "
                  f"{pending:,} rows of merged segments wait for an index")  # fmt: skip
            if args.index_after_load:
                await asyncio.to_thread(_load, uri, name)
            if args.settle:
                while int((await client.describe_index(name, "embedding")).get("pending_index_rows", 0)):  # noqa: ASYNC110
                    await asyncio.sleep(1)
                print(f"no index work pending after {time.perf_counter() - started:.1f} s")
                await asyncio.to_thread(stable, uri, name, args.settle_s)
                print(f"segments unchanged for {args.settle_s} s and no index work pending after "
                      f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        if args.engine == "standalone":
            await asyncio.to_thread(served, uri, name, 600 if args.settle else 0)
        await measure(args, index, vectors, owner, centres, pid)
        print(f"engine RSS: {rss_mb(pid):,.0f} MB")
        await index.close()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a server holding 1M vectors did not stop within a minute
                proc.kill()
                proc.wait()
        if home is not None and not args.keep:  # a 1M-vector server leaves ~20 GB
            shutil.rmtree(home, ignore_errors=True)


async def load(
    args: argparse.Namespace, index: VectorIndex, uri: str, name: str, vectors: np.ndarray, owner: np.ndarray
) -> None:
    if args.index_after_load:  # a bulk load: no index (and no segment indexed twice) until every row is in
        await asyncio.to_thread(_drop_index, uri, name)
    started = time.perf_counter()
    for lo in range(0, len(vectors), args.batch * args.tenants):
        for tenant in range(args.tenants):
            rows = lo + np.flatnonzero(owner[lo : lo + args.batch * args.tenants] == tenant)
            if len(rows):
                await index.upsert(f"t{tenant}", MODEL, [_record(i, vectors[i]) for i in rows], colour=False)
    took = time.perf_counter() - started
    print(f"engine {args.engine}: loaded {len(vectors):,} vectors ({args.tenants} tenants) in {took:.1f} s "
          f"= {len(vectors) / took:,.0f} vectors/s through VectorIndex.upsert")  # fmt: skip
    if args.engine == "standalone" and not args.no_flush:
        assert index._client is not None
        await index._client.flush(name)


def _exact(vectors: np.ndarray, owner: np.ndarray, queries: list[tuple[str, np.ndarray, int]]) -> list[set[str]]:
    """The true top 10 of each query within its tenant, by brute force over the vectors in slices."""
    q = np.stack([v for _, v, _ in queries])
    tenant = np.array([t for _, _, t in queries])
    best = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    ids = np.zeros((len(queries), 10), dtype=np.int64)
    for lo in range(0, len(vectors), 50_000):
        hi = min(len(vectors), lo + 50_000)
        scores = q @ vectors[lo:hi].T
        scores[owner[lo:hi][np.newaxis, :] != tenant[:, np.newaxis]] = -np.inf
        both = np.concatenate([best, scores], axis=1)
        both_ids = np.concatenate([ids, np.broadcast_to(np.arange(lo, hi), scores.shape)], axis=1)
        top = np.argpartition(-both, 10, axis=1)[:, :10]
        best, ids = np.take_along_axis(both, top, axis=1), np.take_along_axis(both_ids, top, axis=1)
    return [{f"i{i}" for i in row} for row in ids]


async def measure(
    args: argparse.Namespace,
    index: VectorIndex,
    vectors: np.ndarray,
    owner: np.ndarray,
    centres: np.ndarray,
    pid: int,
) -> None:
    rng = np.random.default_rng(1)
    queries = []
    for _ in range(args.queries):
        i = int(rng.integers(0, len(vectors)))
        q = vectors[i] + 0.05 * rng.standard_normal(DIM).astype(np.float32)
        queries.append((f"t{owner[i]}", q / np.linalg.norm(q), int(owner[i])))
    # A centre itself: what a search by bytes of one of search_scale.py's real photos asks, the point its seeded
    # look-alikes crowd around (every centre holds ~n / len(centres) of them, at cosine ~0.45-0.9).
    at_centres = []
    for _ in range(args.queries):
        t = int(rng.integers(0, args.tenants))
        at_centres.append((f"t{t}", centres[int(rng.integers(0, len(centres)))], t))
    for level in ("Bounded", "Strong"):
        index._search_consistency = level  # both read modes on the same data, side by side
        for tenant, q, _ in queries[:5]:  # warm-up
            await index.search(tenant, q, model=MODEL, limit=10)
        latencies = []
        for tenant, q, _ in queries:
            t = time.perf_counter()
            await index.search(tenant, q, model=MODEL, limit=10)
            latencies.append((time.perf_counter() - t) * 1000)
        print(f"search, {level} reads (top 10, tenant filter, one at a time): {percentiles(latencies)}")

        async def searcher(share: list[tuple[str, np.ndarray, int]]) -> None:
            for tenant, q, _ in share:
                await index.search(tenant, q, model=MODEL, limit=10)

        started = time.perf_counter()
        await asyncio.gather(*(searcher(queries[k::8]) for k in range(8)))
        print(f"  8 concurrent searchers, {level}: {len(queries) / (time.perf_counter() - started):.0f} searches/s")

    index._search_consistency = "Bounded"
    near_member: list[float] = []
    at_centre: list[float] = []
    for member, centre in zip(queries, at_centres, strict=True):  # alternating, so both see the same machine
        for (tenant, q, _), into in ((member, near_member), (centre, at_centre)):
            t = time.perf_counter()
            await index.search(tenant, q, model=MODEL, limit=10)
            into.append((time.perf_counter() - t) * 1000)
    print(f"alternating, Bounded: near a point {percentiles(near_member)}; at a centre {percentiles(at_centre)}")
    if args.engine == "standalone" and args.trace:
        await trace(index, pid, [q for pair in zip(queries, at_centres, strict=True) for q in pair][: args.trace])

    sets = {"near a point": queries[:100], "at a centre": at_centres[:100]}
    exact = {what: _exact(vectors, owner, qs) for what, qs in sets.items()}
    for ef in args.ef:
        index.search_ef = ef
        for what, qs in sets.items():
            latencies, recall = [], []
            for (tenant, q, _), truth in zip(qs, exact[what], strict=True):
                t = time.perf_counter()
                found = await index.search(tenant, q, model=MODEL, limit=10)
                latencies.append((time.perf_counter() - t) * 1000)
                recall.append(len(truth & {h.image_id for h in found}) / 10)
            print(f"HNSW ef {ef:>3}, {what:>12}: recall@10 {statistics.mean(recall):.3f} against exact search "
                  f"within the tenant, p50 {statistics.median(latencies):.1f} ms (Bounded)")  # fmt: skip


async def trace(index: VectorIndex, pid: int, queries: list[tuple[str, np.ndarray, int]]) -> None:
    """Bounded searches one at a time, Milvus's own metrics scraped before and after each: which of its stages
    (proxy, query node queue, tsafe wait, segment search, reduce) a slow search spends its time in, and whether Go
    collected garbage meanwhile, and which of its threads (and what else on the host) took CPU."""
    listen = f"127.0.0.1:{PORT_BASE + milvus_server.METRICS_OFFSET}"
    traced = []
    began = time.time()
    print(f"traced pass begins at {began:.3f} (Unix time)")
    for tenant, q, _ in queries:
        before = await asyncio.to_thread(scrape, listen) | cpu(pid)
        at, t = time.time() - began, time.perf_counter()
        await index.search(tenant, q, model=MODEL, limit=10)
        took = (time.perf_counter() - t) * 1000
        traced.append(Traced(at, took, grew(before, cpu(pid) | await asyncio.to_thread(scrape, listen))))
    latencies = [t.client_ms for t in traced]
    print(f"traced, Bounded (Milvus's metrics scraped around each search): {percentiles(latencies)}")
    for line in report(traced, slow_ms=max(50.0, statistics.quantiles(latencies, n=100)[94])):
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("lite", "standalone"), required=True)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--batch", type=int, default=500, help="rows per upsert call (one tenant's)")
    parser.add_argument("--index-after-load", action="store_true",
                        help="standalone: drop the index before the load, build it after the flush")  # fmt: skip
    parser.add_argument("--attach", metavar="URI", help="measure a server a run before loaded (same arguments)")
    parser.add_argument("--settle", action="store_true", help="standalone: wait until no index build is pending")
    parser.add_argument("--settle-s", type=float, default=180,
                        help="--settle: then wait until the segments served stay the same this long")  # fmt: skip
    parser.add_argument("--no-flush", action="store_true", help="standalone: leave the last segment growing")
    parser.add_argument("--data", choices=("centres", "photos"), default="centres", help="the vectors (see dataset)")
    parser.add_argument("--keep", action="store_true", help="keep the engine's data directory (it is printed)")
    parser.add_argument("--segment-mb", type=int, default=0, help="standalone: segment maxSize (default: TUNING's)")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="standalone: another milvus.yaml value (a dotted path)")  # fmt: skip
    parser.add_argument("--ef-construction", type=int, default=200, help="HNSW efConstruction (--index-after-load)")
    parser.add_argument("--trace", type=int, default=200,
                        help="standalone: searches traced through Milvus's own metrics (0: none)")  # fmt: skip
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256], help="HNSW ef values to compare")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
