"""Starting a re-index: a tenant's move to another embedding model version (see ``model_pointer``)."""

from __future__ import annotations

import uuid

from opentelemetry import propagate

from deeplens_server import model_pointer
from deeplens_server.backend import Backend
from deeplens_server.errors import FailedPrecondition
from deeplens_server.operation_store import OperationRecord


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
