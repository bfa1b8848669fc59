"""Who is calling: the principal of the current RPC, set by the auth interceptor in a context variable.

Handlers never read a tenant from a request field: they ask ``current_principal()`` and check that any
resource name in the request belongs to it with ``require_tenant``.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from deeplens_server.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("deeplens_principal", default=None)


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _principal.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _principal.reset(token)


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("this call needs a tenant identity", reason="MISSING_CREDENTIALS")
    return principal


def require_tenant(tenant: str) -> str:
    """Returns the caller's tenant if ``tenant`` (from a resource name in the request) is the caller's own."""
    principal = current_principal()
    if tenant != principal.tenant:
        raise PermissionDenied(
            "the resource belongs to another tenant or does not exist",
            reason="TENANT_MISMATCH",
        )
    return principal.tenant
