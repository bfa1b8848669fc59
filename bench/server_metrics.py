"""What the server spends a search on, from its own Prometheus histograms, and latencies (one call's,
percentiles): shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

# What the server spends an RPC call on (a search by default), from its Prometheus histograms (sum and count).
_PARTS = {
    "server": ("deeplens_rpc_duration_seconds", "SearchImages"),
    "triton": ("deeplens_triton_infer_seconds", ""),
    "milvus search": ("deeplens_milvus_seconds", "search"),
    "milvus query": ("deeplens_milvus_seconds", "query"),
    "postgres": ("deeplens_postgres_transaction_seconds", ""),
}


def scrape(listen: str, rpc: str = "SearchImages") -> dict[str, tuple[float, float]]:
    """(seconds, calls) of each of ``_PARTS`` so far, from the server's /metrics; "server" is the time spent in
    ``rpc``."""
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    totals = {part: [0.0, 0.0] for part in _PARTS}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for part, (metric, label) in _PARTS.items():
                label = rpc if part == "server" else label
                if family.name != metric or (label and not any(v.endswith(label) for v in sample.labels.values())):
                    continue
                if sample.name == metric + "_sum":
                    totals[part][0] += sample.value
                elif sample.name == metric + "_count":
                    totals[part][1] += sample.value
    return {part: (t[0], t[1]) for part, t in totals.items()}


def breakdown(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], client_ms: float) -> str:
    """Mean milliseconds per call of the RPC ``scrape`` was given, for each part (and its calls per RPC call,
    where not one), the rest of the server's time, and the client's time outside the server."""
    searches = after["server"][1] - before["server"][1]
    if not searches:
        return "no calls counted by the server"
    mean = {p: (after[p][0] - before[p][0]) * 1000 / searches for p in _PARTS}
    calls = {p: (after[p][1] - before[p][1]) / searches for p in _PARTS}
    parts = [f"{p} {mean[p]:.1f}" + (f" ({calls[p]:.1f} calls)" if calls[p] not in (0.0, 1.0) else "")
             for p in _PARTS if p != "server" and calls[p]]  # fmt: skip
    rest = mean["server"] - sum(mean[p] for p in _PARTS if p != "server")
    return (f"client {client_ms:.1f} = outside the server {client_ms - mean['server']:.1f} + server "
            f"{mean['server']:.1f} = {' + '.join(parts)} + other {rest:.1f} ms (means)")  # fmt: skip


def percentiles(values: list[float]) -> str:
    """p50, p95 and p99 of latencies in milliseconds (at least two)."""
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {statistics.median(values):6.1f} ms, p95 {cuts[94]:6.1f} ms, p99 {cuts[98]:6.1f} ms"


def timed(call: Callable[[], object]) -> float:
    """Milliseconds one call of ``call`` took."""
    began = time.perf_counter()
    call()
    return (time.perf_counter() - began) * 1000
