"""A job delivered twice (a worker crash, a retry) changes nothing the second time: no doubled rows or vectors."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from arq import create_pool
from arq.connections import RedisSettings
from deeplens.client import DeepLensClient
from deeplens_server.config import Settings
from deeplens_server.queue import INGEST_ITEM_JOB
from deeplens_server.vectors import GRPC_OPTIONS, collection_name
from deeplens_stack import Stack
from pymilvus import MilvusClient

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack


async def test_redelivered_ingest_job_is_a_no_op(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/c"
    done = client.wait_operation(client.ingest_image(parent, photos["camera"], image_id="camera").name, timeout=120)
    assert not done.HasField("error")
    operation_id = done.name.rsplit("/", 1)[1]
    endpoints = stack.config.endpoints
    settings = Settings()

    redis = await create_pool(RedisSettings.from_dsn(endpoints["DEEPLENS_REDIS_URL"]))
    try:
        for _ in range(2):
            job = await redis.enqueue_job(
                INGEST_ITEM_JOB, tenant, operation_id, 0, {}, _job_id=f"redelivery-{uuid.uuid4().hex}",
                _queue_name=settings.queue_name,
            )  # fmt: skip
            assert job is not None
            assert await job.result(timeout=60) == "done"
    finally:
        await redis.aclose()

    assert client.get_operation(done.name) == done  # not re-run: same state, counts and times
    conn = await asyncpg.connect(endpoints["DEEPLENS_POSTGRES_DSN"])
    try:
        async with conn.transaction():  # row-level security: read in the tenant's scope
            await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", tenant)
            rows = await conn.fetchval("SELECT count(*) FROM images WHERE tenant_id = $1", tenant)
    finally:
        await conn.close()
    assert rows == 1
    milvus = MilvusClient(uri=endpoints["DEEPLENS_MILVUS_URI"], timeout=60, grpc_options=GRPC_OPTIONS)
    try:
        vectors = milvus.query(
            collection_name(settings.embedding_model, settings.embedding_model_version),
            filter=f'tenant_id == "{tenant}"',
            output_fields=["pk"],
        )
    finally:
        milvus.close()
    assert [v["pk"] for v in vectors] == [f"{tenant}/c/camera"]
