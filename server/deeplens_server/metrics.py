"""Prometheus metrics. Each process serves its own registry over HTTP when configured: the server on
``DEEPLENS_METRICS_LISTEN``, a worker on ``DEEPLENS_WORKER_METRICS_LISTEN`` (host:port; empty = off).

Server: RPCs by method and status code and their latency, the queue's depth. Worker: images indexed /
failed / dead-lettered, the time of each ingest stage, Triton and Milvus call latency (the server's
searches observe these too), PostgreSQL transaction time.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RPCS = Counter("deeplens_rpc_requests", "RPCs handled, by method and status code", ["method", "code"])
RPC_SECONDS = Histogram(
    "deeplens_rpc_duration_seconds", "RPC latency (server side; streams: until the stream ends)", ["method"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
IMAGES = Counter("deeplens_images", "Images through the ingest pipeline, by outcome", ["outcome"])
TRITON_SECONDS = Histogram(
    "deeplens_triton_infer_seconds", "Triton inference calls, by lane (bulk: ingest; query: searches)", ["lane"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
MILVUS_SECONDS = Histogram(
    "deeplens_milvus_seconds", "Milvus calls, by operation", ["operation"], buckets=LATENCY_BUCKETS
)
POSTGRES_SECONDS = Histogram(
    "deeplens_postgres_transaction_seconds",
    "PostgreSQL transactions, from asking the pool for a connection to the commit",
    buckets=LATENCY_BUCKETS,
)
# Where an image's time goes at ingest: read, decode, hashes, model_input, thumbnails, colour (CPU, in a
# thread), embed (Triton), vectors (Milvus), store_thumbnails, match (duplicate candidates and verification),
# commit (PostgreSQL, with the late hash lookup).
STAGE_SECONDS = Histogram(
    "deeplens_ingest_stage_seconds", "Ingest pipeline stages, per image", ["stage"], buckets=LATENCY_BUCKETS
)


_queue_depth: list[Gauge] = []


def queue_depth() -> Gauge:
    """Jobs waiting in the work queue: the server's gauge, made on first use (a worker that runs several
    processes adds up every metric its processes create, and a gauge they never set would read 0)."""
    if not _queue_depth:
        _queue_depth.append(Gauge("deeplens_queue_depth", "Jobs waiting in the work queue"))
    return _queue_depth[0]


def serve_metrics(listen: str) -> bool:
    """Starts the /metrics HTTP endpoint on ``host:port`` (in a daemon thread); False when not configured."""
    if not listen:
        return False
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0")
    _log.info("metrics on http://%s/metrics", listen)
    return True
