"""Hands work to the arq workers. Job ids are derived from the operation, so a job is queued at most once."""

from __future__ import annotations

from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import RedisError

from deeplens_server.errors import Unavailable
from deeplens_server.operations import KIND_REINDEX

INGEST_ITEM_JOB = "ingest_item"
REINDEX_ITEMS_JOB = "reindex_items"
RETIRE_VECTORS_JOB = "retire_vectors"
# Images per re-index job: one batch for the inference server.
REINDEX_PAGE = 32


def job_id(kind: str, tenant_id: str, operation_id: str, suffix: str = "") -> str:
    return f"{kind}:{tenant_id}:{operation_id}{suffix}"


class JobQueue:
    def __init__(self, redis: ArqRedis, queue_name: str) -> None:
        self._redis = redis
        self._queue_name = queue_name

    @classmethod
    async def connect(cls, redis_url: str, queue_name: str) -> JobQueue:
        try:
            redis = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=queue_name)
        except (OSError, RedisError) as exc:
            raise Unavailable("the job queue is unavailable") from exc
        return cls(redis, queue_name)

    @property
    def redis(self) -> ArqRedis:
        return self._redis

    async def depth(self) -> int:
        """Jobs waiting (queued or deferred for a retry), across tenants."""
        return int(await self._redis.zcard(self._queue_name))

    async def _enqueue(self, job: str, *args: Any, key: str, defer_seconds: float | None = None) -> None:
        try:
            await self._redis.enqueue_job(
                job, *args, _job_id=key, _defer_by=defer_seconds, _queue_name=self._queue_name
            )
        except RedisError as exc:
            raise Unavailable("the job queue is unavailable") from exc

    async def enqueue_items(
        self,
        tenant_id: str,
        operation_id: str,
        items: list[int],
        generation: int,
        trace_carrier: dict[str, str],
        *,
        kind: str = "",
    ) -> None:
        """One job per item (a re-index: per page of items); ids carry the item and the operation's generation
        (bumped on resume), so a repeated enqueue is a no-op while a resumed operation re-delivers what is
        still pending."""
        if kind == KIND_REINDEX:
            for start in range(0, len(items), REINDEX_PAGE):
                page = items[start : start + REINDEX_PAGE]
                key = job_id(REINDEX_ITEMS_JOB, tenant_id, operation_id, f":{page[0]}:{generation}")
                await self._enqueue(REINDEX_ITEMS_JOB, tenant_id, operation_id, page, trace_carrier, key=key)
            return
        for item in items:
            key = job_id(INGEST_ITEM_JOB, tenant_id, operation_id, f":{item}:{generation}")
            await self._enqueue(INGEST_ITEM_JOB, tenant_id, operation_id, item, trace_carrier, key=key)

    async def enqueue_retire(self, tenant_id: str, model: str, operation_id: str, after_seconds: float) -> None:
        """Queues the removal of the tenant's ``model`` vectors, ``after_seconds`` from now."""
        key = job_id(RETIRE_VECTORS_JOB, tenant_id, operation_id)
        await self._enqueue(RETIRE_VECTORS_JOB, tenant_id, model, key=key, defer_seconds=after_seconds)

    async def close(self) -> None:
        await self._redis.aclose()

    async def enqueue_operation(
        self, kind: str, tenant_id: str, operation_id: str, trace_carrier: dict[str, str]
    ) -> None:
        """Queues the job that carries out an operation; the job function is named after the operation's kind."""
        key = job_id(kind, tenant_id, operation_id)
        await self._enqueue(kind, tenant_id, operation_id, trace_carrier, key=key)
