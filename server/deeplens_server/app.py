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

from deeplens_server.api.admin import AdminServicer
from deeplens_server.api.ingest import IngestServicer
from deeplens_server.api.operations import OperationsServicer
from deeplens_server.api.search import SearchServicer
from deeplens_server.backend import Backend
from deeplens_server.config import Settings
from deeplens_server.interceptors import RequestContextInterceptor

_log = logging.getLogger(__name__)

SERVICE_NAMES = (
    search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
    ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    "google.longrunning.Operations",
)


def build_server(backend: Backend, health_servicer: health.aio.HealthServicer) -> grpc.aio.Server:
    limit = backend.settings.max_message_bytes
    server = grpc.aio.server(
        interceptors=[RequestContextInterceptor()],
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
    server.add_insecure_port(backend.settings.grpc_listen)
    return server


async def _set_health(servicer: health.aio.HealthServicer, status: int) -> None:
    for name in ("", *SERVICE_NAMES):
        await servicer.set(name, status)


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM/SIGINT: then reports NOT_SERVING, drains for the grace period, closes pools."""
    backend = await Backend.open(settings)
    health_servicer = health.aio.HealthServicer()
    server = build_server(backend, health_servicer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    _log.info("serving on %s", settings.grpc_listen)
    try:
        await stop.wait()
    finally:
        _log.info("shutting down: draining for up to %.0f s", settings.shutdown_grace_seconds)
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(settings.shutdown_grace_seconds)
        await backend.close()
        _log.info("stopped")
