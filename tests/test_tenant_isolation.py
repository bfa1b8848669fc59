"""Tenant B never sees, searches, watches or reaches tenant A's images and operations."""

from __future__ import annotations

import grpc
import pytest
from deeplens.client import DeepLensClient, error_info
from deeplens.v1 import admin_service_pb2, admin_service_pb2_grpc, resources_pb2
from deeplens_stack import Stack

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack


def test_other_tenants_images_never_appear(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant_a, a = new_tenant(admin, connect)
    tenant_b, b = new_tenant(admin, connect)
    a_names = set()
    for name in ("astronaut", "chelsea", "rocket"):
        a.index_image(f"tenants/{tenant_a}/collections/shared", photos[name], timeout=120)
    b.index_image(f"tenants/{tenant_b}/collections/shared", photos["moon"], timeout=120)

    for name in ("astronaut", "chelsea", "rocket"):
        # The very same bytes, searched by B in its own tenant and in the same-named collection.
        for scope in (f"tenants/{tenant_b}", f"tenants/{tenant_b}/collections/shared"):
            results = b.search_images(scope, image_content=photos[name], top_k=100).results
            assert all(r.image.name.startswith(f"tenants/{tenant_b}/") for r in results)
            a_names.update(r.image.name for r in results if tenant_a in r.image.name)
    assert not a_names

    a_image = a.search_images(f"tenants/{tenant_a}", image_content=photos["astronaut"], top_k=1).results[0].image.name
    a_op = a.ingest_image(f"tenants/{tenant_a}/collections/shared", photos["coins"])
    attempts = [
        lambda: b.search_images(f"tenants/{tenant_a}", image_content=photos["astronaut"]),
        lambda: b.search_images(f"tenants/{tenant_b}", image_name=a_image),
        lambda: b.search_images(f"tenants/{tenant_a}", image_name=a_image),
        lambda: b.ingest_image(f"tenants/{tenant_a}/collections/shared", photos["moon"]),
        lambda: b.get_tenant(f"tenants/{tenant_a}"),
        lambda: b.get_operation(a_op.name),
        lambda: list(b.watch_operation(a_op.name, timeout=30)),
    ]
    for attempt in attempts:
        with pytest.raises(grpc.RpcError) as exc:
            attempt()
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(exc.value).reason == "TENANT_MISMATCH"  # type: ignore[union-attr]


def test_tenant_keys_cannot_manage_tenants(admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant_a, _ = new_tenant(admin, connect)
    _, b = new_tenant(admin, connect)  # a tenant administrator, but of B
    for attempt in (lambda: b.create_tenant(tenant_a), lambda: b.create_tenant("brand-new-tenant")):
        with pytest.raises(grpc.RpcError) as exc:
            attempt()
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(exc.value).reason == "ROLE_TOO_LOW"  # type: ignore[union-attr]
    with pytest.raises(grpc.RpcError) as exc:
        b.create_api_key(tenant_a, resources_pb2.ROLE_TENANT_ADMIN)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(exc.value).reason == "TENANT_MISMATCH"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_CREDENTIALS"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "INVALID_CREDENTIALS"),
        ((("authorization", "Bearer not-a-deeplens-key"),), "INVALID_CREDENTIALS"),
        ((("authorization", "Bearer dlk_0123456789abcdef_wrongsecret"),), "INVALID_CREDENTIALS"),
        ((("x-deeplens-tenant", "acme"),), "MISSING_CREDENTIALS"),
    ],
)
def test_calls_without_valid_key_are_unauthenticated(
    stack: Stack, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    with grpc.insecure_channel(stack.config.grpc_target) as channel:
        stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetTenant(admin_service_pb2.GetTenantRequest(name="tenants/x"), metadata=metadata, timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(exc.value).reason == reason  # type: ignore[union-attr]


def test_a_real_key_with_a_wrong_secret_is_refused(stack: Stack, admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, _ = new_tenant(admin, connect)
    _, secret = admin.create_api_key(tenant, resources_pb2.ROLE_VIEWER)
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    with pytest.raises(grpc.RpcError) as exc:
        connect(forged).get_tenant(f"tenants/{tenant}")
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert connect(secret).get_tenant(f"tenants/{tenant}").name == f"tenants/{tenant}"
