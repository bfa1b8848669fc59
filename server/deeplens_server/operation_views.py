"""The API's view of an operation: the stored record plus its first failures."""

from __future__ import annotations

from google.longrunning import operations_proto_pb2 as operations_pb2

from deeplens_server import operations
from deeplens_server.backend import Backend
from deeplens_server.operation_store import ItemRecord, OperationRecord


async def describe(backend: Backend, record: OperationRecord) -> operations_pb2.Operation:
    failures: list[ItemRecord] = []
    if record.failed:
        failures = await backend.ops.items(
            record.tenant_id,
            record.id,
            states=operations.ITEM_FAILED_STATES,
            after=-1,
            limit=operations.FAILURES_IN_METADATA,
        )
    return operations.to_proto(record, failures)
