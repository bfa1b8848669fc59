"""Structured logs: one JSON object per line with the time, level, logger, message, and — when known — the
trace and span ids (OpenTelemetry) and the tenant. API-key secrets are masked in every message as a last
line of defence; nothing logs request payloads or image bytes. ``DEEPLENS_LOG_FORMAT=text`` for humans."""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime

from opentelemetry import trace

_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("deeplens_log_tenant", default="")
_SECRET = re.compile(r"(dlk_[A-Za-z0-9]+_)[A-Za-z0-9_\-]{8,}")


def bind_tenant(tenant: str) -> contextvars.Token[str]:
    """Names the tenant in the logs of the current context (a worker job); reset with the token."""
    return _tenant.set(tenant)


def unbind_tenant(token: contextvars.Token[str]) -> None:
    _tenant.reset(token)


def mask_secrets(text: str) -> str:
    return _SECRET.sub(r"\1<redacted>", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        from deeplens_server.tenancy import principal_or_none

        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = f"{span.trace_id:032x}"
            out["span_id"] = f"{span.span_id:016x}"
        principal = principal_or_none()
        tenant = _tenant.get() or (principal.tenant if principal is not None else None)
        if tenant:
            out["tenant"] = tenant
        if record.exc_info:
            out["error"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


class _MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
