"""Tenant B never sees, searches, watches or reaches tenant A's images and operations."""

from __future__ import annotations

import grpc
import pytest
from deeplens.client import error_info

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack


def test_other_tenants_images_never_appear(connect: ClientFactory, photos: dict[str, bytes]) -> None:
    tenant_a, a = new_tenant(connect)
    tenant_b, b = new_tenant(connect)
    a_names = set()
    for name in ("astronaut", "chelsea", "rocket"):
        op = a.wait_operation(a.ingest_image(f"tenants/{tenant_a}/collections/shared", photos[name]).name, timeout=120)
        assert not op.HasField("error")
    b.wait_operation(b.ingest_image(f"tenants/{tenant_b}/collections/shared", photos["moon"]).name, timeout=120)

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
        lambda: b.create_tenant(tenant_a),
    ]
    for attempt in attempts:
        with pytest.raises(grpc.RpcError) as exc:
            attempt()
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(exc.value).reason == "TENANT_MISMATCH"  # type: ignore[union-attr]


def test_calls_without_identity_are_unauthenticated(stack: object, connect: ClientFactory) -> None:
    from deeplens.v1 import admin_service_pb2, admin_service_pb2_grpc
    from deeplens_stack import Stack

    assert isinstance(stack, Stack)
    with grpc.insecure_channel(stack.config.grpc_target) as channel:
        stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        for metadata in ((), (("x-deeplens-tenant", "Not A Tenant!"),)):
            with pytest.raises(grpc.RpcError) as exc:
                stub.GetTenant(admin_service_pb2.GetTenantRequest(name="tenants/x"), metadata=metadata, timeout=10)
            assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
