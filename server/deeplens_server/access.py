"""Admission of every RPC, in one place: method policy, API key, role, rate limit — then the audit record."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from deeplens_server import auth
from deeplens_server.admin_repository import AdminRepository
from deeplens_server.auth import Role
from deeplens_server.errors import PermissionDenied, Unauthenticated
from deeplens_server.model_pointer import remember_caller_tenant
from deeplens_server.policy import POLICIES, MethodPolicy
from deeplens_server.ratelimit import RateLimiter
from deeplens_server.tenancy import Principal

_log = logging.getLogger(__name__)

# A key's last use is recorded at most this often: an RPC costs one PostgreSQL statement, not two.
TOUCH_EVERY = timedelta(minutes=1)


def _printable(value: str, limit: int = 512) -> str:
    """Hostile names must not break the audit write: escape what PostgreSQL text cannot hold or show."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in value[:limit])


def resource_of(request: Any) -> str:
    """The main resource a request names, for the audit log (a streamed request: the call's method only)."""
    if not hasattr(request, "DESCRIPTOR"):
        return ""
    for field in ("name", "parent"):
        value = getattr(request, field, "")
        if isinstance(value, str) and value:
            return _printable(value)
    tenant_id = getattr(request, "tenant_id", "")
    if isinstance(tenant_id, str) and tenant_id:
        return _printable(f"tenants/{tenant_id}")
    tenant = getattr(request, "tenant", None)
    return _printable(str(getattr(tenant, "name", "") or ""))


class AccessControl:
    def __init__(self, admin: AdminRepository, limiter: RateLimiter, *, default_requests_per_second: int) -> None:
        self._admin = admin
        self._limiter = limiter
        self._default_rps = default_requests_per_second

    def policy(self, method: str) -> MethodPolicy:
        policy = POLICIES.get(method)
        if policy is None:
            raise PermissionDenied("this method is not available", reason="METHOD_NOT_ALLOWED")
        return policy

    async def authenticate(self, metadata: Any) -> tuple[Principal, int]:
        """The caller's principal and its tenant's request rate (0: the default)."""
        token = auth.bearer_token(metadata)
        record = await self._admin.key_for_auth(auth.key_id_of(token))
        # Unknown id and wrong secret look the same to the caller.
        if record is None or not auth.verify(token, record.secret_sha256):
            raise Unauthenticated("the API key is not valid", reason="INVALID_CREDENTIALS")
        if record.tenant_deleted:
            raise Unauthenticated("the API key's tenant was deleted", reason="TENANT_DELETED")
        if record.key.revoke_time is not None:
            raise Unauthenticated("the API key was revoked", reason="API_KEY_REVOKED")
        last = record.key.last_use_time
        if last is None or datetime.now(UTC) - last >= TOUCH_EVERY:
            await self._admin.touch_api_key(record.key.id)
        principal = Principal(key_id=record.key.id, tenant=record.key.tenant_id, role=Role(record.key.role))
        if principal.tenant is not None and record.tenant_settings is not None:
            remember_caller_tenant(principal.tenant, record.tenant_settings)
        return principal, record.requests_per_second

    async def authorize(self, principal: Principal, policy: MethodPolicy, requests_per_second: int) -> None:
        if principal.role < policy.role:
            raise PermissionDenied(
                f"this needs the {policy.role.name.lower()} role",
                reason="ROLE_TOO_LOW",
                metadata={"required_role": f"ROLE_{policy.role.name}"},
            )
        subject = f"tenant:{principal.tenant}" if principal.tenant else f"key:{principal.key_id}"
        await self._limiter.take(subject, requests_per_second or self._default_rps)

    async def audit(self, principal: Principal, method: str, request: Any, outcome: str) -> None:
        """Records a mutation. A failure to record is logged, never turned into the caller's error."""
        resource = resource_of(request)
        tenant = principal.tenant
        if tenant is None and resource.startswith("tenants/"):
            tenant = resource.split("/")[1]  # a platform administrator acting on a tenant: the tenant sees it
        try:
            await self._admin.record_audit(tenant, principal.actor, method.lstrip("/"), resource, outcome)
        except Exception:
            _log.exception("could not record audit event for %s", method)
