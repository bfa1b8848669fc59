"""Who is calling: the principal of the current RPC, set by the auth interceptor in a context variable.

Handlers never take a tenant from a request field: they ask for the principal and check that any resource
name in the request belongs to it (``require_tenant``), or that the caller administers it
(``require_admin_of``).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from deeplens_server.auth import Role
from deeplens_server.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    # None for platform keys: they manage tenants and hold no tenant's data.
    tenant: str | None
    role: Role

    @property
    def is_platform(self) -> bool:
        return self.role == Role.PLATFORM_ADMIN

    @property
    def actor(self) -> str:
        return f"tenants/{self.tenant}/apiKeys/{self.key_id}" if self.tenant else f"platform/apiKeys/{self.key_id}"


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("deeplens_principal", default=None)


def set_principal(principal: Principal | None) -> None:
    _principal.set(principal)


def principal_or_none() -> Principal | None:
    """The calling principal, or None outside an RPC (logging asks)."""
    return _principal.get()


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("this call needs an API key", reason="MISSING_CREDENTIALS")
    return principal


def _mismatch() -> PermissionDenied:
    return PermissionDenied("the resource belongs to another tenant or does not exist", reason="TENANT_MISMATCH")


def require_tenant(tenant: str) -> str:
    """For tenant data: ``tenant`` (from a resource name in the request) must be the caller's own."""
    principal = current_principal()
    if principal.tenant is None or tenant != principal.tenant:
        raise _mismatch()
    return tenant


def require_reader_of(tenant: str) -> str:
    """For tenant metadata (the tenant itself, its operations): its own keys, or a platform administrator."""
    principal = current_principal()
    if not principal.is_platform and tenant != principal.tenant:
        raise _mismatch()
    return tenant


def require_admin_of(tenant: str) -> str:
    """For tenant administration (keys, audit log): its tenant administrators, or a platform administrator."""
    principal = current_principal()
    if principal.is_platform:
        return tenant
    if tenant != principal.tenant:
        raise _mismatch()
    if principal.role < Role.TENANT_ADMIN:
        raise PermissionDenied("this needs the tenant administrator role", reason="ROLE_TOO_LOW")
    return tenant
