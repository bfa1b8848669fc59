"""arq job functions and worker settings. Transient failures retry with exponential backoff and jitter."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from arq.connections import RedisSettings
from arq.worker import func as arq_func
from deeplens_server import reindex as server_reindex
from deeplens_server.backend import Backend
from deeplens_server.config import Settings
from deeplens_server.errors import DeepLensError, Unavailable
from deeplens_server.logs import bind_tenant, unbind_tenant
from deeplens_server.metrics import serve_metrics
from deeplens_server.operations import KIND_PURGE_TENANT, KIND_SCAN_LOCATION
from deeplens_server.queue import INGEST_ITEM_JOB, REINDEX_ITEMS_JOB, RETIRE_VECTORS_JOB
from deeplens_server.status import to_rpc_status
from deeplens_server.telemetry import setup_tracing, shutdown_tracing, span
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from deeplens_worker import pipeline, purge, reindex, scan

_log = logging.getLogger(__name__)
HEALTH_CHECK_INTERVAL_SECONDS = 5


def backoff_seconds(job_try: int) -> float:
    """Exponential backoff (1, 2, 4, ... capped at 60 s) with +-50 % jitter."""
    base = float(min(60, 2 ** max(0, job_try - 1)))
    return base * random.uniform(0.5, 1.5)


async def _run(
    ctx: dict[str, Any],
    step: Callable[[Backend], Awaitable[object]],
    carrier: dict[str, str],
    name: str,
    tenant_id: str,
) -> str:
    """Runs a job step in a span under the trace context the job carries (the request that queued it), with
    the tenant named in its logs."""
    token = otel_context.attach(propagate.extract(carrier))
    tenant = bind_tenant(tenant_id)
    try:
        with span(f"job.{name}", SpanKind.CONSUMER, job_try=int(ctx.get("job_try", 1))):
            await step(ctx["backend"])
        return "done"
    finally:
        unbind_tenant(tenant)
        otel_context.detach(token)


def _retry_or_none(ctx: dict[str, Any], exc: DeepLensError, what: str) -> Retry | None:
    settings: Settings = ctx["settings"]
    job_try = int(ctx.get("job_try", 1))
    if job_try >= settings.job_max_tries:
        return None
    delay = backoff_seconds(job_try)
    _log.warning("%s: %s; retry %d in %.1f s", what, exc.reason, job_try, delay)
    return Retry(defer=delay)


async def _retried(
    ctx: dict[str, Any],
    step: Callable[[Backend], Awaitable[object]],
    carrier: dict[str, str],
    name: str,
    tenant_id: str,
    what: str,
    give_up: Callable[[DeepLensError], Awaitable[None]],
) -> str:
    """Runs a job step. Transient failures — and defects or unexpected OS errors, so nothing hangs — retry
    with backoff; when the tries are spent, ``give_up`` records the failure (dead letters)."""
    try:
        return await _run(ctx, step, carrier, name, tenant_id)
    except Unavailable as exc:
        failure: DeepLensError = exc
    except Exception:
        _log.exception("%s failed unexpectedly", what)
        failure = DeepLensError(f"{what} failed unexpectedly; retry it later")
    retry = _retry_or_none(ctx, failure, what)
    if retry is not None:
        raise retry
    await give_up(failure)
    return "dead letter"


async def ingest_item(
    ctx: dict[str, Any], tenant_id: str, operation_id: str, item: int, trace_carrier: dict[str, str]
) -> str:
    return await _retried(
        ctx,
        lambda b: pipeline.ingest_item(b, tenant_id, operation_id, item),
        trace_carrier,
        "ingest_item",
        tenant_id,
        f"{tenant_id}/{operation_id}#{item}",
        lambda failure: pipeline.fail_item(ctx["backend"], tenant_id, operation_id, item, failure),
    )


async def scan_location(ctx: dict[str, Any], tenant_id: str, operation_id: str, trace_carrier: dict[str, str]) -> str:
    backend: Backend = ctx["backend"]
    try:
        step = lambda b: scan.scan_location(b, tenant_id, operation_id, trace_carrier)  # noqa: E731
        return await _run(ctx, step, trace_carrier, "scan_location", tenant_id)
    except Unavailable as exc:
        retry = _retry_or_none(ctx, exc, f"scan {tenant_id}/{operation_id}")
        if retry is not None:
            raise retry from exc
        failure: DeepLensError = exc
    except DeepLensError as exc:  # the location is gone, refused the credentials, or is no longer allowed
        failure = exc
    record = await backend.ops.abort(tenant_id, operation_id, to_rpc_status(failure).SerializeToString())
    await backend.events.announce(record)
    return "failed"


async def purge_tenant(ctx: dict[str, Any], tenant_id: str, operation_id: str, trace_carrier: dict[str, str]) -> str:
    try:
        return await _run(
            ctx, lambda b: purge.purge_tenant(b, tenant_id, operation_id), trace_carrier, "purge_tenant", tenant_id
        )
    except Unavailable as exc:
        retry = _retry_or_none(ctx, exc, f"purge {tenant_id}")
        if retry is not None:
            raise retry from exc
        await pipeline.fail_item(ctx["backend"], tenant_id, operation_id, 0, exc)
        return "failed"


async def reindex_items(
    ctx: dict[str, Any], tenant_id: str, operation_id: str, items: list[int], trace_carrier: dict[str, str]
) -> str:
    return await _retried(
        ctx,
        lambda b: reindex.reindex_items(b, tenant_id, operation_id, items),
        trace_carrier,
        "reindex_items",
        tenant_id,
        f"re-index {tenant_id}/{operation_id} from #{items[0]}",
        lambda failure: reindex.fail_items(ctx["backend"], tenant_id, operation_id, items, failure),
    )


async def retire_vectors(ctx: dict[str, Any], tenant_id: str, model: str) -> str:
    """Retried by arq on failure; vectors left behind are cleared by the next re-index into that model."""
    await server_reindex.retire_vectors(ctx["backend"], tenant_id, model)
    return "done"


async def startup(ctx: dict[str, Any]) -> None:
    setup_tracing("deeplens-worker")
    serve_metrics(ctx["settings"].worker_metrics_listen)
    ctx["backend"] = await Backend.open(ctx["settings"])


async def shutdown(ctx: dict[str, Any]) -> None:
    backend: Backend | None = ctx.get("backend")
    if backend is not None:
        await backend.close()
    shutdown_tracing()


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker``."""
    return {
        "functions": [
            arq_func(ingest_item, name=INGEST_ITEM_JOB, timeout=settings.job_timeout_seconds),
            arq_func(purge_tenant, name=KIND_PURGE_TENANT, timeout=settings.job_timeout_seconds),
            arq_func(scan_location, name=KIND_SCAN_LOCATION, timeout=settings.job_timeout_seconds),
            arq_func(reindex_items, name=REINDEX_ITEMS_JOB, timeout=settings.job_timeout_seconds),
            arq_func(retire_vectors, name=RETIRE_VECTORS_JOB, timeout=settings.job_timeout_seconds),
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": settings.queue_name,
        "max_tries": settings.job_max_tries,
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.job_timeout_seconds,
        "keep_result": 3600,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "ctx": {"settings": settings},
        "handle_signals": True,
    }
