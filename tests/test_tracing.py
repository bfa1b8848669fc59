"""One trace from the caller's span through gRPC, the server, the queue, the worker, Triton, Milvus,
PostgreSQL and Redis. The caller's spans go to an in-memory exporter; the server's and the worker's travel
over OTLP to a receiver in the test process (conftest.SpanSink)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from deeplens.client import DeepLensClient
from deeplens.v1 import resources_pb2
from deeplens_stack import Stack
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import ClientFactory, SpanSink, new_tenant


def _attr(span: Any, key: str) -> str:
    return next((a.value.string_value for a in span.attributes if a.key == key), "")


@pytest.mark.stack
def test_one_trace_covers_rpc_queue_worker_and_every_store(
    stack: Stack,
    admin: DeepLensClient,
    connect: ClientFactory,
    photos: dict[str, bytes],
    span_sink: tuple[SpanSink, str],
) -> None:
    sink = span_sink[0]
    tenant, _ = new_tenant(admin, connect)
    _, secret = admin.create_api_key(tenant, resources_pb2.ROLE_EDITOR)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # this process's provider (set once; nothing else here traces)
    tracer = provider.get_tracer("test")
    instrumentor = GrpcInstrumentorClient()  # the caller's channels, traced, as an instrumented app does it
    instrumentor.instrument()
    try:
        with (
            DeepLensClient(stack.config.grpc_target, api_key=secret) as client,
            tracer.start_as_current_span("caller") as root,
        ):
            op = client.ingest_image(f"tenants/{tenant}/collections/traced", photos["coffee"], image_id="coffee")
            done = client.wait_operation(op.name, timeout=120)
    finally:
        instrumentor.uninstrument()
    assert not done.HasField("error")
    trace_id = root.get_span_context().trace_id.to_bytes(16, "big")
    caller = {s.name for s in exporter.get_finished_spans() if s.context.trace_id == root.get_span_context().trace_id}
    assert "/deeplens.v1.IngestService/IngestImage" in caller  # the client interceptor's span

    wanted = {
        "server RPC": lambda svc, s: svc == "deeplens-server" and s.name == "/deeplens.v1.IngestService/IngestImage",
        "server PostgreSQL": lambda svc, s: svc == "deeplens-server" and _attr(s, "db.system") == "postgresql",
        "server Redis (enqueue)": lambda svc, s: svc == "deeplens-server" and _attr(s, "db.system") == "redis",
        "worker job": lambda svc, s: svc == "deeplens-worker" and s.name == "job.ingest_item",
        "worker Triton": lambda svc, s: svc == "deeplens-worker" and s.name == "triton.infer",
        "worker Milvus": lambda svc, s: svc == "deeplens-worker" and s.name == "milvus.upsert",
        "worker PostgreSQL": lambda svc, s: svc == "deeplens-worker" and _attr(s, "db.system") == "postgresql",
    }
    # Spans are exported as they end, in batches, so the tree completes over a moment: a parent (the RPC, the
    # job) ends after its children.
    caller_ids = {s.context.span_id.to_bytes(8, "big") for s in exporter.get_finished_spans()}
    deadline = time.monotonic() + 30
    while True:
        spans = sink.trace(trace_id)
        missing = [what for what, test in wanted.items() if not any(test(svc, s) for svc, s in spans)]
        ids = {s.span_id for _, s in spans} | caller_ids
        orphans = [(svc, s.name) for svc, s in spans if s.parent_span_id not in ids]
        if (not missing and not orphans) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert not missing, f"missing from the trace: {missing}; got {sorted({(svc, s.name) for svc, s in spans})}"
    # One tree: every span's parent is in the trace (the caller's spans included).
    assert not orphans, f"spans whose parent never arrived: {orphans}"
