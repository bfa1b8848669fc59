"""Following operations: the stored snapshot first, then a fresh snapshot whenever the tenant's stream says
an operation changed. Events carry no state, so none can mislead; a quiet stream is re-polled anyway.
Snapshots are read at most every ``MIN_INTERVAL`` seconds per watcher, so a 1,000-item operation costs a
watcher a few reads a second, not one per item."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from deeplens_server import operations
from deeplens_server.backend import Backend
from deeplens_server.errors import InvalidArgument
from deeplens_server.operation_store import OperationRecord

POLL_MS = 5_000
MIN_INTERVAL = 0.2
_TOKEN = re.compile(r"\d{1,20}-\d{1,20}")


def _progress(record: OperationRecord) -> tuple[object, ...]:
    return (record.state, record.stage, record.processed, record.failed, record.paused, record.end_time)


async def watch_operation(backend: Backend, tenant_id: str, operation_id: str) -> AsyncIterator[OperationRecord]:
    """Yields the operation now and after every change, ending with its final state.

    The stream position is taken *before* the snapshot, so a change between the two is still seen.
    """
    cursor = await backend.events.last_id(tenant_id)
    record = await backend.ops.get(tenant_id, operation_id)
    yield record
    if record.end_time is not None:
        return
    async for batch in backend.events.tail(tenant_id, cursor, block_ms=POLL_MS):
        if batch and all(event.operation_id != operation_id for event in batch):
            continue
        fresh = await backend.ops.get(tenant_id, operation_id)
        if _progress(fresh) != _progress(record):
            record = fresh
            yield record
        if record.end_time is not None:
            return
        await asyncio.sleep(MIN_INTERVAL)


async def watch_tenant(
    backend: Backend, tenant_id: str, resume_token: str
) -> AsyncIterator[tuple[OperationRecord, str]]:
    """Yields (operation, resume token) for every change of any of the tenant's operations.

    Without a token: the unfinished operations first. With one: every operation changed after it, in the
    order of their last change; each token is the id of the event it answers, so resuming from the last
    token received misses nothing. A token older than the stream's retention starts with a snapshot again.
    """
    if resume_token and not _TOKEN.fullmatch(resume_token):
        raise InvalidArgument("resume_token is not valid", field="resume_token", reason="INVALID_RESUME_TOKEN")
    cursor = resume_token or await backend.events.last_id(tenant_id)
    if not resume_token or await backend.events.trimmed_past(tenant_id, resume_token):
        active = await backend.ops.list_recent(
            tenant_id, states=(operations.PENDING, operations.RUNNING), after=None, limit=1000
        )
        for record in reversed(active):
            yield record, cursor
    async for batch in backend.events.tail(tenant_id, cursor, block_ms=POLL_MS):
        last_event: dict[str, str] = {}
        for event in batch:
            last_event.pop(event.operation_id, None)
            last_event[event.operation_id] = event.event_id
        for operation_id, event_id in last_event.items():
            yield await backend.ops.get(tenant_id, operation_id), event_id
        if batch:
            await asyncio.sleep(MIN_INTERVAL)
