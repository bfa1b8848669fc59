"""What a search's scalar filter costs on a real Milvus standalone server: the tenant and collection compared
as strings (schema 3) against as INT64 keys (schema 4), with no filter as the floor.

    .venv/bin/python bench/filter_cost.py [--rows 200000] [--queries 200]

One collection of ``--rows`` random 1280-d vectors (HNSW M=16, efConstruction=200, COSINE), every row of one
tenant and one collection, so each filter matches every row and its whole cost is evaluating it. Once every row
is sealed and indexed (and 90 s more, for the server's own merges), each query is searched once with each
filter, the filters taking turns, top 10 at ef 256, Bounded; prints p50/p95/p99 per filter.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vector_scale

DIM = 1280
TENANT, COLLECTION = "tenant-0123456789abcdef", "collection-photos-2024"
TENANT_KEY, COLLECTION_KEY = 1234567890123, 987654321987
FILTERS = {
    "none": "",
    "str tenant": f'tenant_id == "{TENANT}"',
    "str tenant+coll": f'tenant_id == "{TENANT}" and collection_id in ["{COLLECTION}"]',
    "int tenant": f"tenant_key == {TENANT_KEY}",
    "int tenant+coll": f"tenant_key == {TENANT_KEY} and collection_key in [{COLLECTION_KEY}]",
}


def load(c: MilvusClient, rows: int, rng: np.random.Generator) -> None:
    s = c.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=512)
    s.add_field("tenant_id", DataType.VARCHAR, max_length=64, is_partition_key=True)
    s.add_field("tenant_key", DataType.INT64)
    s.add_field("collection_id", DataType.VARCHAR, max_length=64)
    s.add_field("collection_key", DataType.INT64)
    s.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    ip = c.prepare_index_params()
    ip.add_index("embedding", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200})
    c.create_collection("t", schema=s, index_params=ip, consistency_level="Strong")
    t0 = time.time()
    for lo in range(0, rows, 5000):
        v = rng.standard_normal((5000, DIM)).astype(np.float32)
        c.insert("t", [{"pk": f"{TENANT}/{COLLECTION}/img-{lo + i:09d}", "tenant_id": TENANT, "tenant_key": TENANT_KEY,
                        "collection_id": COLLECTION, "collection_key": COLLECTION_KEY, "embedding": v[i].tolist()}
                       for i in range(min(5000, rows - lo))])  # fmt: skip
    c.flush("t")
    print(f"loaded in {time.time() - t0:.0f} s", flush=True)
    while True:
        info = c.describe_index("t", "embedding")
        if info.get("pending_index_rows", 1) == 0 and info.get("indexed_rows") == rows:
            break
        time.sleep(5)
    print(f"indexed {time.time() - t0:.0f} s after the load began", flush=True)
    time.sleep(90)
    c.release_collection("t")
    c.load_collection("t")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vector-scale-standalone-filter"))
    proc, uri = vector_scale.start("standalone", home, {})
    try:
        c = MilvusClient(uri=uri)
        rng = np.random.default_rng(0)
        load(c, args.rows, rng)
        queries = rng.standard_normal((args.queries, DIM)).astype(np.float32)
        times: dict[str, list[float]] = {k: [] for k in FILTERS}
        for _ in range(3):
            for q in queries:
                for name, expr in FILTERS.items():
                    t = time.perf_counter()
                    c.search("t", [q.tolist()], filter=expr, limit=10, output_fields=["tenant_id", "collection_id"],
                             search_params={"metric_type": "COSINE", "params": {"ef": 256}},
                             consistency_level="Bounded")  # fmt: skip
                    times[name].append((time.perf_counter() - t) * 1000)
        for name, ts in times.items():
            ts.sort()
            p95, p99 = ts[int(0.95 * len(ts))], ts[int(0.99 * len(ts))]
            print(f"{name:16s} p50 {statistics.median(ts):6.2f}  p95 {p95:6.2f}  p99 {p99:6.2f} ms")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
