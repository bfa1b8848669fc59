"""Prometheus endpoints of the server and the worker, scraped over HTTP after real work."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from deeplens.client import DeepLensClient
from deeplens_stack import Stack
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ClientFactory, new_tenant


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.stack
def test_server_and_worker_metrics_count_real_work(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    before = _scrape(stack.config.ports["worker_metrics"]).get(("deeplens_images_total", (("outcome", "indexed"),)), 0)
    op = client.ingest_image(f"tenants/{tenant}/collections/m", photos["moon"], image_id="moon")
    client.wait_operation(op.name, timeout=120)
    client.search_images(f"tenants/{tenant}", image_name=f"tenants/{tenant}/collections/m/images/moon")

    server = _scrape(stack.config.ports["metrics"])
    ingest = (("code", "OK"), ("method", "/deeplens.v1.IngestService/IngestImage"))
    assert server[("deeplens_rpc_requests_total", ingest)] >= 1
    search = (("method", "/deeplens.v1.SearchService/SearchImages"),)
    assert server[("deeplens_rpc_duration_seconds_count", search)] >= 1
    assert server[("deeplens_milvus_seconds_count", (("operation", "search"),))] >= 1  # the search's own query
    deadline = time.monotonic() + 15  # the gauge is refreshed every 5 s
    while ("deeplens_queue_depth", ()) not in server and time.monotonic() < deadline:
        time.sleep(1)
        server = _scrape(stack.config.ports["metrics"])
    assert server[("deeplens_queue_depth", ())] >= 0

    worker = _scrape(stack.config.ports["worker_metrics"])
    assert worker[("deeplens_images_total", (("outcome", "indexed"),))] >= before + 1
    assert worker[("deeplens_triton_infer_seconds_count", ())] >= 1
    assert worker[("deeplens_milvus_seconds_count", (("operation", "upsert"),))] >= 1
    # A refused call is counted with its code.
    denied = (("code", "PERMISSION_DENIED"), ("method", "/deeplens.v1.AdminService/GetTenant"))
    with pytest.raises(grpc.RpcError):
        client.get_tenant("tenants/someone-else")
    assert _scrape(stack.config.ports["metrics"]).get(("deeplens_rpc_requests_total", denied), 0) >= 1
