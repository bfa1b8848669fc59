"""Long-running operations: states, how they end, and their ``google.longrunning.Operation`` view."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from deeplens.v1 import admin_service_pb2, ingest_service_pb2, resources_pb2
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import status_pb2

from deeplens_server.errors import Aborted, Cancelled, DeepLensError
from deeplens_server.status import to_rpc_status

if TYPE_CHECKING:
    from deeplens_server.operation_store import ItemRecord, OperationRecord

PENDING = resources_pb2.OPERATION_STATE_PENDING
RUNNING = resources_pb2.OPERATION_STATE_RUNNING
SUCCEEDED = resources_pb2.OPERATION_STATE_SUCCEEDED
FAILED = resources_pb2.OPERATION_STATE_FAILED
CANCELLED = resources_pb2.OPERATION_STATE_CANCELLED

# Item states (operation_items.state).
ITEM_PENDING = 1
ITEM_SUCCEEDED = 3
ITEM_FAILED = 4
ITEM_DEAD = 5
ITEM_CANCELLED = 6
ITEM_FAILED_STATES = (ITEM_FAILED, ITEM_DEAD)

KIND_INGEST_IMAGE = "ingest_image"
KIND_INGEST_BATCH = "ingest_batch"
KIND_PURGE_TENANT = "purge_tenant"
KIND_SCAN_LOCATION = "scan_location"
KIND_REINDEX = "reindex_tenant"
FAILURES_IN_METADATA = 20


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


def batch_outcome(record: OperationRecord, last_error: bytes | None) -> tuple[int, bytes | None, bytes | None]:
    """How an ingest ends: cancelled if asked; failed (with the last item's error) if no item succeeded;
    otherwise succeeded — failed items are reported in the metadata, not as the operation's error."""
    if record.cancel_requested:
        return CANCELLED, None, _status(Cancelled("the operation was cancelled"))
    if record.succeeded == 0 and record.failed > 0:
        if record.total == 1 and last_error is not None:
            return FAILED, None, last_error
        return FAILED, None, _status(Aborted(f"all {record.failed} items failed", reason="ALL_ITEMS_FAILED"))
    response = ingest_service_pb2.IngestImagesResponse(
        succeeded=record.succeeded, failed=record.failed, duplicates=record.duplicates
    )
    return SUCCEEDED, pack(response), None


def scan_outcome(record: OperationRecord, last_error: bytes | None) -> tuple[int, bytes | None, bytes | None]:
    """A scan ends like an ingest, answering with what it found and did."""
    state, _, error = batch_outcome(record, last_error)
    if state != SUCCEEDED and not (record.total == 0 and not record.cancel_requested):
        return state, None, error
    counts = record.payload.get("counts", {})
    response = ingest_service_pb2.ScanStorageLocationResponse(
        succeeded=record.succeeded, failed=record.failed, **{k: int(v) for k, v in counts.items()}
    )
    return SUCCEEDED, pack(response), None


def reindex_outcome(record: OperationRecord, last_error: bytes | None) -> tuple[int, bytes | None, bytes | None]:
    """A re-index succeeds (and the tenant switches models) only when every image was embedded again."""
    previous = str(record.payload.get("previous_model", ""))
    if record.cancel_requested:
        return CANCELLED, None, _status(Cancelled(f"the re-index was cancelled; the tenant stays on {previous}"))
    if record.failed > 0:
        error = Aborted(
            f"{record.failed} images could not be embedded again; the tenant stays on {previous}",
            reason="REINDEX_INCOMPLETE",
            metadata={"failed": str(record.failed)},
        )
        return FAILED, None, _status(error)
    response = admin_service_pb2.ReindexTenantResponse(
        model=str(record.payload.get("model", "")), previous_model=previous, images=record.succeeded
    )
    return SUCCEEDED, pack(response), None


def outcome_of(kind: str) -> Callable[[OperationRecord, bytes | None], tuple[int, bytes | None, bytes | None]]:
    """How an operation of ``kind`` ends once all its items are counted."""
    return {KIND_REINDEX: reindex_outcome, KIND_SCAN_LOCATION: scan_outcome}.get(kind, batch_outcome)


def _status(error: DeepLensError) -> bytes:
    return to_rpc_status(error).SerializeToString()


def item_failure(item: ItemRecord) -> resources_pb2.ItemFailure:
    failure = resources_pb2.ItemFailure(
        item=item.item, image_id=str(item.source.get("image_id", "")), retryable=item.state == ITEM_DEAD
    )
    if item.error is not None:
        failure.status.CopyFrom(status_pb2.Status.FromString(item.error))
    return failure


def to_proto(record: OperationRecord, failures: list[ItemRecord] | None = None) -> operations_pb2.Operation:
    metadata = resources_pb2.OperationMetadata(
        state=record.state,  # type: ignore[arg-type]
        total=record.total,
        processed=record.processed,
        succeeded=record.succeeded,
        failed=record.failed,
        duplicates=record.duplicates,
        remaining=record.total - record.processed,
        percent=100.0 * record.processed / record.total if record.total else 100.0,
        stage=record.stage,
        paused=record.paused,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        start_time=timestamp(record.start_time),
        end_time=timestamp(record.end_time),
        failures=[item_failure(f) for f in failures or []],
    )
    if record.start_time is not None and record.processed:
        until = record.end_time or datetime.now(UTC)
        elapsed = max((until - record.start_time).total_seconds(), 1e-3)
        metadata.items_per_second = record.processed / elapsed
        if record.end_time is None and not record.paused:
            metadata.eta.FromTimedelta(timedelta(seconds=(record.total - record.processed) / metadata.items_per_second))
    op = operations_pb2.Operation(name=operation_name(record.tenant_id, record.id), done=record.end_time is not None)
    op.metadata.Pack(metadata)
    if record.error is not None:
        op.error.CopyFrom(status_pb2.Status.FromString(record.error))
    elif record.response is not None:
        op.response.CopyFrom(any_pb2.Any.FromString(record.response))
    return op
