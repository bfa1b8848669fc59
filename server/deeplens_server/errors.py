"""The one exception hierarchy of DeepLens. Domain code raises these; ``status.py`` maps them to gRPC.

Each error carries a stable, machine-readable ``reason`` (UPPER_SNAKE_CASE, AIP-193) and optional metadata.
Messages are written for the caller: they never include internal details.
"""

from __future__ import annotations


class DeepLensError(Exception):
    """Base class. ``reason`` identifies the error for machines; the message is for people."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DeepLensError):
    """The request is malformed. ``field`` names the offending field (for ``BadRequest``)."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ):
        super().__init__(message, reason=reason, metadata=metadata)
        self.field = field


class ImageRejected(InvalidArgument):
    """The image bytes are not an acceptable image: empty, too big, undecodable, unsupported format."""

    reason = "IMAGE_UNDECODABLE"


class NotFound(DeepLensError):
    reason = "NOT_FOUND"

    def __init__(self, resource_type: str, resource_name: str, *, reason: str | None = None):
        super().__init__(f"{resource_type} {resource_name!r} not found", reason=reason)
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExists(DeepLensError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DeepLensError):
    reason = "FAILED_PRECONDITION"


class Unauthenticated(DeepLensError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DeepLensError):
    reason = "PERMISSION_DENIED"


class Cancelled(DeepLensError):
    """The work was cancelled at the caller's request."""

    reason = "CANCELLED"


class Aborted(DeepLensError):
    """A concurrency conflict: an etag did not match (AIP-154). Re-read and retry."""

    reason = "ETAG_MISMATCH"


class ResourceExhausted(DeepLensError):
    """A quota or rate limit was hit. ``retry_after`` (seconds) becomes ``RetryInfo``; ``quota`` a ``QuotaFailure``."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        retry_after: float | None = None,
        quota: str = "",
        metadata: dict[str, str] | None = None,
    ):
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after
        self.quota = quota


class Unavailable(DeepLensError):
    """A dependency (Triton, Milvus, PostgreSQL, Redis, storage) is down or timed out; retrying may help."""

    reason = "DEPENDENCY_UNAVAILABLE"
