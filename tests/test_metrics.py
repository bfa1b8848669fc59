"""Prometheus endpoints of the server and the worker, scraped over HTTP after real work."""

from __future__ import annotations

import time

import grpc
import pytest
from deeplens.client import DeepLensClient, error_info
from deeplens.v1 import admin_service_pb2, resources_pb2
from deeplens_stack import Stack
from google.protobuf import field_mask_pb2

from tests.conftest import ClientFactory, new_tenant, scrape_metrics


@pytest.mark.stack
def test_server_and_worker_metrics_count_real_work(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    before = scrape_metrics(stack.config.ports["worker_metrics"]).get(
        ("deeplens_images_total", (("outcome", "indexed"),)), 0
    )
    op = client.ingest_image(f"tenants/{tenant}/collections/m", photos["moon"], image_id="moon")
    client.wait_operation(op.name, timeout=120)
    client.search_images(f"tenants/{tenant}", image_name=f"tenants/{tenant}/collections/m/images/moon")
    query_lane = (("lane", "query"),)
    embedded = scrape_metrics(stack.config.ports["metrics"]).get(("deeplens_triton_infer_seconds_count", query_lane), 0)
    client.search_images(f"tenants/{tenant}", image_content=photos["moon"])

    server = scrape_metrics(stack.config.ports["metrics"])
    # A search embeds its query through the query lane, never the bulk lane that ingest batches in.
    assert server[("deeplens_triton_infer_seconds_count", query_lane)] == embedded + 1
    assert ("deeplens_triton_infer_seconds_count", (("lane", "bulk"),)) not in server
    ingest = (("code", "OK"), ("method", "/deeplens.v1.IngestService/IngestImage"))
    assert server[("deeplens_rpc_requests_total", ingest)] >= 1
    search = (("method", "/deeplens.v1.SearchService/SearchImages"),)
    assert server[("deeplens_rpc_duration_seconds_count", search)] >= 1
    assert server[("deeplens_milvus_seconds_count", (("operation", "search"),))] >= 1  # the search's own query
    deadline = time.monotonic() + 15  # the gauge is refreshed every 5 s
    while ("deeplens_queue_depth", ()) not in server and time.monotonic() < deadline:
        time.sleep(1)
        server = scrape_metrics(stack.config.ports["metrics"])
    assert server[("deeplens_queue_depth", ())] >= 0

    worker = scrape_metrics(stack.config.ports["worker_metrics"])
    assert worker[("deeplens_images_total", (("outcome", "indexed"),))] >= before + 1
    assert worker[("deeplens_triton_infer_seconds_count", (("lane", "bulk"),))] >= 1
    assert ("deeplens_triton_infer_seconds_count", query_lane) not in worker
    assert worker[("deeplens_milvus_seconds_count", (("operation", "upsert"),))] >= 1
    # A refused call is counted with its code.
    denied = (("code", "PERMISSION_DENIED"), ("method", "/deeplens.v1.AdminService/GetTenant"))
    with pytest.raises(grpc.RpcError):
        client.get_tenant("tenants/someone-else")
    assert scrape_metrics(stack.config.ports["metrics"]).get(("deeplens_rpc_requests_total", denied), 0) >= 1


def _transactions(stack: Stack) -> float:
    return scrape_metrics(stack.config.ports["metrics"])[("deeplens_postgres_transaction_seconds_count", ())]


@pytest.mark.stack
def test_a_search_reads_the_tenant_with_its_key_and_sees_settings_changed_a_moment_before(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    collection = f"tenants/{tenant}/collections/m"
    for name in ("moon", "coins"):
        client.index_image(collection, photos[name], image_id=name, timeout=120)
    searches = 20
    before = _transactions(stack)
    for _ in range(searches):
        found = client.search_images(f"tenants/{tenant}", image_name=f"{collection}/images/moon")
        assert [r.image.name for r in found.results] == [f"{collection}/images/coins"]
    spent = _transactions(stack) - before
    # Each search: the API key with its tenant's settings, then the hits' rows (before: a third, the settings).
    assert 2 * searches <= spent < 2.5 * searches, spent

    client.search_images(f"tenants/{tenant}", image_content=photos["moon"])
    update = resources_pb2.Tenant(
        name=f"tenants/{tenant}", limits=resources_pb2.TenantLimits(max_image_bytes=len(photos["moon"]) - 1)
    )
    mask = field_mask_pb2.FieldMask(paths=["limits.max_image_bytes"])
    admin.admin.UpdateTenant(
        admin_service_pb2.UpdateTenantRequest(tenant=update, update_mask=mask), metadata=admin.metadata
    )
    with pytest.raises(grpc.RpcError) as refused:
        client.search_images(f"tenants/{tenant}", image_content=photos["moon"])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(refused.value)
    assert info is not None
    assert info.reason == "IMAGE_TOO_LARGE"
