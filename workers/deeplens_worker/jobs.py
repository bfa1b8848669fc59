"""arq job functions and worker settings. Transient failures retry with exponential backoff and jitter."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from arq.connections import RedisSettings
from arq.worker import func as arq_func
from deeplens_server.backend import Backend
from deeplens_server.config import Settings
from deeplens_server.errors import Unavailable
from deeplens_server.operations import KIND_INGEST_IMAGE, KIND_PURGE_TENANT
from deeplens_server.repository import OperationRecord
from opentelemetry import context as otel_context
from opentelemetry import propagate

from deeplens_worker import pipeline, purge

_log = logging.getLogger(__name__)
HEALTH_CHECK_INTERVAL_SECONDS = 5


def backoff_seconds(job_try: int) -> float:
    """Exponential backoff (1, 2, 4, ... capped at 60 s) with +-50 % jitter."""
    base = float(min(60, 2 ** max(0, job_try - 1)))
    return base * random.uniform(0.5, 1.5)


Step = Callable[[Backend, str, str], Awaitable[OperationRecord]]


async def _run(ctx: dict[str, Any], step: Step, tenant_id: str, operation_id: str, carrier: dict[str, str]) -> str:
    """Runs one operation's step under its trace context; transient failures retry, the last one fails it."""
    backend: Backend = ctx["backend"]
    settings: Settings = ctx["settings"]
    token = otel_context.attach(propagate.extract(carrier))
    try:
        record = await step(backend, tenant_id, operation_id)
        return f"state={record.state}"
    except Unavailable as exc:
        job_try = int(ctx.get("job_try", 1))
        if job_try < settings.job_max_tries:
            delay = backoff_seconds(job_try)
            _log.warning("%s/%s: %s; retry %d in %.1f s", tenant_id, operation_id, exc.reason, job_try, delay)
            raise Retry(defer=delay) from exc
        await pipeline.fail_operation(backend, tenant_id, operation_id, exc)
        return "failed: dependency unavailable"
    finally:
        otel_context.detach(token)


async def ingest_image(ctx: dict[str, Any], tenant_id: str, operation_id: str, trace_carrier: dict[str, str]) -> str:
    return await _run(ctx, pipeline.ingest_image, tenant_id, operation_id, trace_carrier)


async def purge_tenant(ctx: dict[str, Any], tenant_id: str, operation_id: str, trace_carrier: dict[str, str]) -> str:
    return await _run(ctx, purge.purge_tenant, tenant_id, operation_id, trace_carrier)


async def startup(ctx: dict[str, Any]) -> None:
    ctx["backend"] = await Backend.open(ctx["settings"])


async def shutdown(ctx: dict[str, Any]) -> None:
    backend: Backend | None = ctx.get("backend")
    if backend is not None:
        await backend.close()


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker``."""
    return {
        "functions": [arq_func(ingest_image, name=KIND_INGEST_IMAGE), arq_func(purge_tenant, name=KIND_PURGE_TENANT)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": settings.queue_name,
        "max_tries": settings.job_max_tries,
        "max_jobs": 16,
        "job_timeout": 300,
        "keep_result": 3600,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "ctx": {"settings": settings},
        "handle_signals": True,
    }
