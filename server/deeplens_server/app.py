"""Builds and runs the gRPC server: services, interceptors, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from deeplens.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
)
from google.longrunning import operations_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from deeplens_server import auth, metrics
from deeplens_server.access import AccessControl
from deeplens_server.api.admin import AdminServicer
from deeplens_server.api.ingest import IngestServicer
from deeplens_server.api.operations import OperationsServicer
from deeplens_server.api.search import SearchServicer
from deeplens_server.backend import Backend
from deeplens_server.config import Settings
from deeplens_server.interceptors import RequestContextInterceptor
from deeplens_server.metrics import serve_metrics
from deeplens_server.ratelimit import RateLimiter
from deeplens_server.telemetry import setup_tracing, shutdown_tracing

_log = logging.getLogger(__name__)

SERVICE_NAMES = (
    search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
    ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    "google.longrunning.Operations",
)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from the configured PEM files; requiring client certificates when a client CA is given (mTLS)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


async def install_bootstrap_key(backend: Backend) -> None:
    """Makes the configured platform administrator key valid (idempotent across restarts and replicas)."""
    token = backend.settings.bootstrap_admin_key.get_secret_value()
    if token:
        await backend.admin.ensure_platform_key(
            auth.key_id_of(token), "bootstrap platform administrator", auth.digest(token), int(auth.Role.PLATFORM_ADMIN)
        )


def build_server(backend: Backend, health_servicer: health.aio.HealthServicer) -> grpc.aio.Server:
    settings = backend.settings
    limit = settings.max_message_bytes
    access = AccessControl(
        backend.admin,
        RateLimiter(backend.redis),
        default_requests_per_second=settings.default_requests_per_second,
    )
    server = grpc.aio.server(
        # The tracing interceptor first, so a call's span covers admission and errors too.
        interceptors=[aio_server_interceptor(), RequestContextInterceptor(access)],  # type: ignore[no-untyped-call]
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
    )
    search_service_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(backend), server)
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(backend), server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(backend), server)
    operations_pb2_grpc.add_OperationsServicer_to_server(OperationsServicer(backend), server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    credentials = server_credentials(settings)
    if credentials is None:
        server.add_insecure_port(settings.grpc_listen)
    else:
        server.add_secure_port(settings.grpc_listen, credentials)
    return server


async def _set_health(servicer: health.aio.HealthServicer, status: int) -> None:
    for name in ("", *SERVICE_NAMES):
        await servicer.set(name, status)


async def _refresh_gauges(backend: Backend, every: float = 5.0) -> None:
    """Keeps the gauges read from the stores current (the queue's depth)."""
    while True:
        try:
            metrics.queue_depth().set(await backend.queue.depth())
        except Exception:  # a store hiccup must not end the loop; the gauge keeps its last value
            _log.debug("could not refresh gauges", exc_info=True)
        await asyncio.sleep(every)


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM/SIGINT: then reports NOT_SERVING, drains for the grace period, closes pools."""
    setup_tracing("deeplens-server")
    serve_metrics(settings.metrics_listen)
    backend = await Backend.open(settings)
    await install_bootstrap_key(backend)
    health_servicer = health.aio.HealthServicer()
    server = build_server(backend, health_servicer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    gauges = asyncio.create_task(_refresh_gauges(backend)) if settings.metrics_listen else None
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    _log.info("serving on %s", settings.grpc_listen)
    try:
        await stop.wait()
    finally:
        _log.info("shutting down: draining for up to %.0f s", settings.shutdown_grace_seconds)
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(settings.shutdown_grace_seconds)
        if gauges is not None:
            gauges.cancel()
        await backend.close()
        shutdown_tracing()
        _log.info("stopped")
