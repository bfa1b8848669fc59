"""Tracing with OpenTelemetry. Off unless an OTLP endpoint is configured by the standard environment
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``; headers, TLS, sampling and
``OTEL_SERVICE_NAME`` as the OpenTelemetry SDK reads them). When on: the gRPC server's spans (its
interceptor), PostgreSQL (asyncpg) and Redis (redis-py, so arq too) instrumented, and spans of our own around
Triton and Milvus calls. The trace context travels inside every queued job (``propagate.inject`` at
enqueue, ``extract`` in the worker), so one trace covers a request from the RPC to the worker's last write.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

_log = logging.getLogger(__name__)
_provider: object | None = None

tracer = trace.get_tracer("deeplens")


def configured() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup_tracing(service: str) -> bool:
    """Installs the SDK with a batching OTLP (gRPC) exporter and the library instrumentations, once per
    process; returns whether tracing is on."""
    global _provider
    if _provider is not None:
        return True
    if not configured():
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    _provider = provider
    _log.info("tracing on: OTLP export as %s", service)
    return True


def shutdown_tracing() -> None:
    """Flushes and stops the exporter (on shutdown, so the last spans are not lost)."""
    from opentelemetry.sdk.trace import TracerProvider

    if isinstance(_provider, TracerProvider):
        _provider.shutdown()


@contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: str | int | float | bool) -> Iterator[Span]:
    """A span of our own (a no-op when tracing is off)."""
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes) as current:
        yield current
