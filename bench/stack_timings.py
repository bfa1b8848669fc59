"""Start-up, ingest and search timings of the embedded stack (the walking skeleton's numbers).

    .venv/bin/python bench/stack_timings.py [--runs 20] [--port-base 45000]

Uses a fresh data directory, so the first start is a cold one (initdb, new Milvus collection, model load);
the stack is then stopped and started again on the same data for the warm start. Prints medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from deeplens.client import DeepLensClient
from deeplens.v1 import resources_pb2
from deeplens_stack import Stack, StackConfig
from deeplens_stack.photos import edited_copy, sample_photos


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--port-base", type=int, default=45000)
    ns = parser.parse_args()
    results: dict[str, object] = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip()}
    with tempfile.TemporaryDirectory(prefix="deeplens-bench-") as tmp:
        stack = Stack(StackConfig(data_dir=Path(tmp) / "stack", port_base=ns.port_base))
        try:
            t0 = time.monotonic()
            stack.up()
            results["cold_start_s"] = round(time.monotonic() - t0, 2)

            photos = sample_photos()
            with DeepLensClient(stack.config.grpc_target, api_key=stack.admin_key()) as admin:
                admin.create_tenant("bench", limits=resources_pb2.TenantLimits(requests_per_second=10_000))
                _, secret = admin.create_api_key("bench", resources_pb2.ROLE_EDITOR)
            with DeepLensClient(stack.config.grpc_target, api_key=secret, timeout=120) as client:
                parent = "tenants/bench/collections/photos"
                t0 = time.monotonic()
                ops = [client.ingest_image(parent, data, image_id=name) for name, data in photos.items()]
                for op in ops:
                    client.wait_operation(op.name, timeout=300)
                elapsed = time.monotonic() - t0
                results["ingest_demo_photos"] = {
                    "images": len(ops),
                    "seconds": round(elapsed, 2),
                    "images_per_s": round(len(ops) / elapsed, 1),
                }
                query = edited_copy(photos["chelsea"])
                client.search_images(parent, image_content=query)  # warm-up
                by_bytes, by_name = [], []
                for _ in range(ns.runs):
                    t0 = time.perf_counter()
                    client.search_images(parent, image_content=query, top_k=10)
                    by_bytes.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    client.search_images(parent, image_name=f"{parent}/images/chelsea", top_k=10)
                    by_name.append(time.perf_counter() - t0)
                results["search_by_bytes"] = _ms(by_bytes)
                results["search_by_name"] = _ms(by_name)

            t0 = time.monotonic()
            stack.down()
            results["stop_s"] = round(time.monotonic() - t0, 2)
            t0 = time.monotonic()
            stack.up()
            results["warm_start_s"] = round(time.monotonic() - t0, 2)
        finally:
            stack.destroy()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
