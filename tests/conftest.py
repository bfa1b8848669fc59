"""Fixtures: one real embedded stack per test session (own data directory and ports), and clients on it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from deeplens.client import DeepLensClient
from deeplens.v1 import resources_pb2
from deeplens_stack import Stack, StackConfig
from deeplens_stack.photos import sample_photos
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

# Below Linux's ephemeral range (32768-60999): an outgoing connection can never hold a port a test server is
# about to bind.
TEST_PORT_BASE = int(os.environ.get("DEEPLENS_TEST_PORT_BASE", "24000"))
# Suites that also run on a real Milvus server (DEEPLENS_STACK_MILVUS=standalone; `python3 dev.py test` does
# both): ingest, search, duplicates, delete, tenants, models, figures.
MILVUS_SERVER_SUITES = {
    "test_ingest_search.py",
    "test_duplicates.py",
    "test_tenant_isolation.py",
    "test_row_level_security.py",
    "test_model_lifecycle.py",
    "test_insight.py",
    "test_vector_index.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in MILVUS_SERVER_SUITES:
            item.add_marker(pytest.mark.milvus_server)


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver in the test process: the stack's server and worker export their spans here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: deque[tuple[str, Any]] = deque(maxlen=200_000)

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self._spans.extend((attrs.get("service.name", ""), s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, Any]]:
        """(service, span) of every span received for one trace."""
        with self._lock:
            return [(service, s) for service, s in self._spans if s.trace_id == trace_id]


@pytest.fixture(scope="session")
def span_sink() -> Iterator[tuple[SpanSink, str]]:
    sink = SpanSink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield sink, f"http://127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, span_sink: tuple[SpanSink, str]) -> Iterator[Stack]:
    data_dir = Path(tmp_path_factory.mktemp("stack"))
    # Short job limits: arq hands a dead worker's job to another only after the longest limit + 10 s.
    # Traces go to the in-process OTLP receiver, exported every 200 ms.
    environ = {
        **os.environ,
        "DEEPLENS_JOB_TIMEOUT_SECONDS": "15",
        "DEEPLENS_RETIRED_VECTORS_GRACE_SECONDS": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": span_sink[1],
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    stack = Stack(StackConfig(data_dir=data_dir, port_base=TEST_PORT_BASE, durable=False, environ=environ))
    try:
        stack.up(timeout=240)
        yield stack
    finally:
        if os.environ.get("DEEPLENS_TEST_KEEP_LOGS"):  # for a post-mortem: the services' logs outlive the stack
            shutil.copytree(data_dir / "logs", os.environ["DEEPLENS_TEST_KEEP_LOGS"], dirs_exist_ok=True)
        stack.destroy()


ClientFactory = Callable[[str], DeepLensClient]


@pytest.fixture(scope="session")
def connect(stack: Stack) -> Iterator[ClientFactory]:
    """Opens clients that call with a given API key; closes them at the end."""
    opened: list[DeepLensClient] = []

    def factory(api_key: str) -> DeepLensClient:
        client = DeepLensClient(stack.config.grpc_target, api_key=api_key, timeout=60)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


@pytest.fixture(scope="session")
def admin(stack: Stack, connect: ClientFactory) -> DeepLensClient:
    """The platform administrator."""
    return connect(stack.admin_key())


def new_tenant(
    admin: DeepLensClient,
    connect: ClientFactory,
    role: resources_pb2.Role.ValueType = resources_pb2.ROLE_TENANT_ADMIN,
    limits: resources_pb2.TenantLimits | None = None,
) -> tuple[str, DeepLensClient]:
    """A fresh tenant and a client holding a key of ``role`` for it."""
    tenant = f"t{uuid.uuid4().hex[:12]}"
    admin.create_tenant(tenant, f"test tenant {tenant}", limits)
    _, secret = admin.create_api_key(tenant, role, "test")
    return tenant, connect(secret)


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return sample_photos()


def start_extra_server(stack: Stack, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    """A second ``deeplens-server`` on the stack's stores, listening on ``port``, with extra environment."""
    full = stack.child_env()
    full["DEEPLENS_GRPC_LISTEN"] = f"127.0.0.1:{port}"
    full["DEEPLENS_METRICS_LISTEN"] = ""  # the stack's server holds the metrics port
    full.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "deeplens_server"], env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def stop_process(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output or ""


def scrape_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus endpoint on loopback: (sample name, sorted labels) to value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
