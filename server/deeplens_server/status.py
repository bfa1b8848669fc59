"""The one place that turns DeepLens errors into gRPC statuses (AIP-193).

Every error becomes a ``google.rpc.Status`` with an ``ErrorInfo`` (reason, domain, metadata), plus
``BadRequest`` for invalid fields and ``ResourceInfo`` for missing resources. Unexpected exceptions become
INTERNAL with a generic message: their text never reaches the caller.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from deeplens_server import errors

ERROR_DOMAIN = "deeplens.dev"
DETAILS_METADATA_KEY = "grpc-status-details-bin"

_log = logging.getLogger(__name__)

_CODES: list[tuple[type[errors.DeepLensError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def grpc_code(err: errors.DeepLensError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(err, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_rpc_status(err: BaseException) -> status_pb2.Status:
    """Builds the ``google.rpc.Status`` for any exception (unknown ones become a generic INTERNAL)."""
    if not isinstance(err, errors.DeepLensError):
        err = errors.DeepLensError("internal error")
    code = grpc_code(err)
    status = status_pb2.Status(code=code.value[0], message=err.message)
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=err.metadata)
    status.details.append(_pack(info))
    if isinstance(err, errors.InvalidArgument) and err.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=err.field, description=err.message)
        status.details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(err, errors.NotFound):
        resource = error_details_pb2.ResourceInfo(
            resource_type=err.resource_type, resource_name=err.resource_name, description=err.message
        )
        status.details.append(_pack(resource))
    if isinstance(err, errors.ResourceExhausted):
        if err.quota:
            quota = error_details_pb2.QuotaFailure.Violation(subject=err.quota, description=err.message)
            status.details.append(_pack(error_details_pb2.QuotaFailure(violations=[quota])))
        if err.retry_after is not None:
            status.details.append(_pack(_retry_info(err.retry_after)))
    if code == grpc.StatusCode.UNAVAILABLE:
        status.details.append(_pack(_retry_info(1.0)))
    return status


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromTimedelta(timedelta(seconds=max(seconds, 0.001)))
    return info


async def abort(context: grpc.aio.ServicerContext[object, object], err: BaseException) -> None:
    """Ends the RPC with the status for ``err``. Logs unexpected errors with their traceback."""
    if isinstance(err, grpc.aio.AbortError):
        raise err
    if isinstance(err, errors.DeepLensError):
        code = grpc_code(err)
    else:
        _log.error("unhandled error in RPC", exc_info=err)
        code = grpc.StatusCode.INTERNAL
    status = to_rpc_status(err)
    await context.abort(code, status.message, trailing_metadata=((DETAILS_METADATA_KEY, status.SerializeToString()),))
