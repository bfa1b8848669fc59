"""Admin insight: a tenant's figures, each dependency's health, the models — on the live stack."""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest
from deeplens.client import DeepLensClient
from deeplens.v1 import admin_service_pb2
from deeplens_server.freshness import WriteMarks
from deeplens_server.vectors import VectorIndex
from deeplens_stack import Stack
from redis.asyncio import Redis

from tests.conftest import ClientFactory, new_tenant


@pytest.mark.stack
def test_tenant_stats_health_and_models(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    other, _ = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/stats"
    for name in ("a", "b"):  # the same bytes twice: one duplicate group
        client.index_image(parent, photos["coins"], image_id=name, timeout=120)

    stats = client.admin.GetTenantStats(
        admin_service_pb2.GetTenantStatsRequest(name=f"tenants/{tenant}"), metadata=client.metadata
    )
    assert (stats.images, stats.vectors, stats.duplicate_images, stats.duplicate_groups) == (2, 2, 2, 1)
    assert stats.bytes == 2 * len(photos["coins"])
    assert stats.reclaimable_bytes == len(photos["coins"])
    assert stats.operations_by_state["OPERATION_STATE_SUCCEEDED"] == 2
    assert stats.pending_items == 0
    assert stats.queue_depth >= 0
    with pytest.raises(grpc.RpcError) as denied:
        client.admin.GetTenantStats(
            admin_service_pb2.GetTenantStatsRequest(name=f"tenants/{other}"), metadata=client.metadata
        )
    err: Any = denied.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    health = admin.admin.GetSystemHealth(admin_service_pb2.GetSystemHealthRequest(), metadata=admin.metadata)
    assert health.healthy
    assert {d.name for d in health.dependencies} == {"postgresql", "redis", "milvus", "triton"}
    assert all(d.healthy and d.latency.ToNanoseconds() > 0 for d in health.dependencies)
    with pytest.raises(grpc.RpcError) as refused:
        client.admin.GetSystemHealth(admin_service_pb2.GetSystemHealthRequest(), metadata=client.metadata)
    err = refused.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    models = client.admin.ListModels(admin_service_pb2.ListModelsRequest(), metadata=client.metadata).models
    active = [m for m in models if m.active]
    assert len(active) == 1
    assert active[0].name == "efficientnet_lite0@1"
    assert active[0].ready
    assert active[0].collection.startswith("images__efficientnet_lite0")
    # Each model's query-lane twin is how the model is served to searches, not a model of its own.
    assert sorted(m.name for m in models) == ["efficientnet_lite0@1", "mobilenet_v2@1"]


@pytest.mark.stack
async def test_vector_count_shows_drift_where_the_index_can_count(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    """On a Milvus server `vectors` is the index's own count, so a vector lost from the index shows as a gap to
    `images`. Milvus Lite cannot count a tenant without reading every row: there it is PostgreSQL's record."""
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/drift"
    for name, photo in (("a", "coins"), ("b", "coffee")):
        client.index_image(parent, photos[photo], image_id=name, timeout=120)
    request = admin_service_pb2.GetTenantStatsRequest(name=f"tenants/{tenant}")
    before = client.admin.GetTenantStats(request, metadata=client.metadata)
    assert (before.images, before.vectors) == (2, 2)

    redis = Redis.from_url(stack.config.endpoints["DEEPLENS_REDIS_URL"])
    index = VectorIndex(stack.config.endpoints["DEEPLENS_MILVUS_URI"], token="", search_consistency="Tenant")
    index.marks = WriteMarks(redis, window_ms=10_000)  # so that the next read sees the delete, as in DeepLens
    await index.open()
    try:
        await index.delete_images(tenant, [("drift", "a")])
        counted = index.counts_tenants
    finally:
        await index.close()
        await redis.aclose()
    after = client.admin.GetTenantStats(request, metadata=client.metadata)
    assert after.images == 2
    assert after.vectors == (1 if counted else 2)
    assert counted == (os.environ.get("DEEPLENS_STACK_MILVUS") == "standalone")
