"""Following an operation: the stored snapshot first, then a fresh snapshot each time its stream says so."""

from __future__ import annotations

from collections.abc import AsyncIterator

from deeplens_server.backend import Backend
from deeplens_server.repository import OperationRecord

POLL_MS = 5_000


def _progress(record: OperationRecord) -> tuple[object, ...]:
    return (record.state, record.stage, record.processed, record.succeeded, record.failed, record.end_time)


async def watch_operation(backend: Backend, tenant_id: str, operation_id: str) -> AsyncIterator[OperationRecord]:
    """Yields the operation now and after every change, ending with its final state.

    The stream position is taken *before* the snapshot, so a change between the two is still seen; and when
    the stream is quiet for ``POLL_MS`` the snapshot is re-read anyway, so a lost event only delays.
    """
    cursor = await backend.events.last_id(tenant_id)
    record = await backend.repo.get_operation(tenant_id, operation_id)
    yield record
    if record.end_time is not None:
        return
    async for batch in backend.events.tail(tenant_id, cursor, block_ms=POLL_MS):
        if batch and all(event.operation_id != operation_id for event in batch):
            continue
        fresh = await backend.repo.get_operation(tenant_id, operation_id)
        if _progress(fresh) != _progress(record):
            record = fresh
            yield record
        if record.end_time is not None:
            return
