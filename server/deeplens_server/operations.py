"""Long-running operations: states, and the ``google.longrunning.Operation`` view of a stored operation."""

from __future__ import annotations

from datetime import datetime

from deeplens.v1 import resources_pb2
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import status_pb2

from deeplens_server.repository import OperationRecord

PENDING = resources_pb2.OPERATION_STATE_PENDING
RUNNING = resources_pb2.OPERATION_STATE_RUNNING
SUCCEEDED = resources_pb2.OPERATION_STATE_SUCCEEDED
FAILED = resources_pb2.OPERATION_STATE_FAILED
CANCELLED = resources_pb2.OPERATION_STATE_CANCELLED

KIND_INGEST_IMAGE = "ingest_image"
KIND_PURGE_TENANT = "purge_tenant"


def operation_name(tenant_id: str, operation_id: str) -> str:
    return f"tenants/{tenant_id}/operations/{operation_id}"


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def pack(message: object) -> bytes:
    """Serialises ``message`` as a ``google.protobuf.Any`` (how operation responses are stored)."""
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed.SerializeToString()


def to_proto(record: OperationRecord) -> operations_pb2.Operation:
    metadata = resources_pb2.OperationMetadata(
        state=record.state,  # type: ignore[arg-type]
        total=record.total,
        processed=record.processed,
        succeeded=record.succeeded,
        failed=record.failed,
        stage=record.stage,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        end_time=timestamp(record.end_time),
    )
    op = operations_pb2.Operation(name=operation_name(record.tenant_id, record.id), done=record.end_time is not None)
    op.metadata.Pack(metadata)
    if record.error is not None:
        op.error.CopyFrom(status_pb2.Status.FromString(record.error))
    elif record.response is not None:
        op.response.CopyFrom(any_pb2.Any.FromString(record.response))
    return op
