"""Starting a re-index: a tenant's move to another embedding model version (see ``model_pointer``)."""

from __future__ import annotations

import logging
import uuid

from opentelemetry import propagate

from deeplens_server import model_pointer, operations
from deeplens_server.backend import Backend
from deeplens_server.errors import FailedPrecondition
from deeplens_server.operation_store import OperationRecord

_log = logging.getLogger(__name__)


async def start(backend: Backend, tenant_id: str, target: str) -> OperationRecord:
    """Creates the re-index operation and queues its pages. FAILED_PRECONDITION if the inference server does
    not serve ``target``, the tenant already uses it, or a re-index runs."""
    model_pointer.split_model_id(target)
    if not await backend.embedder.ready(target):
        raise FailedPrecondition(
            f"the inference server does not serve {target}", reason="MODEL_NOT_READY", metadata={"model": target}
        )
    current = await backend.tenant_models(tenant_id)
    if current.reindex is None and current.active != target:
        await backend.prepare_model(target)
        # Vectors the tenant left in the target's collection (an earlier stay there, or a cancelled re-index)
        # go first: nothing writes there for this tenant until the operation below exists.
        await backend.vectors.delete(tenant_id, model=target)
    record = await backend.ops.create_reindex(
        tenant_id, uuid.uuid4().hex, target=target, default_model=backend.embedder.model_id
    )
    await backend.events.announce(record)
    if record.end_time is None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        items = await backend.ops.pending_items(tenant_id, record.id)
        await backend.queue.enqueue_items(tenant_id, record.id, items, record.generation, carrier, kind=record.kind)
    return record


async def retire(backend: Backend, tenant_id: str, record: OperationRecord) -> None:
    """After a re-index ends: schedules the removal of the tenant's vectors of the model it does not use —
    the previous one after a switch (after a grace period), the target otherwise."""
    switched = record.state == operations.SUCCEEDED
    model = str(record.payload.get("previous_model" if switched else "model", ""))
    if model:
        grace = backend.settings.retired_vectors_grace_seconds if switched else 0.0
        await backend.queue.enqueue_retire(tenant_id, model, record.id, grace)


async def retire_vectors(backend: Backend, tenant_id: str, model: str) -> None:
    """Removes the tenant's ``model`` vectors unless the tenant uses that model again (or is moving to it)."""
    models = await backend.tenant_models(tenant_id)
    if model in models.writes:
        return
    await backend.vectors.delete(tenant_id, model=model)
    _log.info("removed the tenant's %s vectors", model)
