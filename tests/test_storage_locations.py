"""Bring-your-own-storage locations: validation, write-only credentials sealed at rest, connection tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import grpc
import pytest
from deeplens.client import DeepLensClient, error_info
from deeplens.v1 import admin_service_pb2, resources_pb2
from deeplens_server.errors import FailedPrecondition, InvalidArgument
from deeplens_server.sealing import Sealer
from deeplens_server.storage import LocationSpec, StoragePolicy, validate
from deeplens_stack import Stack
from google.protobuf import field_mask_pb2

from tests.conftest import ClientFactory, new_tenant

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _create(client: DeepLensClient, tenant: str, location_id: str, location: resources_pb2.StorageLocation) -> object:
    request = admin_service_pb2.CreateStorageLocationRequest(
        parent=f"tenants/{tenant}", storage_location_id=location_id, storage_location=location
    )
    return client.admin.CreateStorageLocation(request, metadata=client.metadata).storage_location


def _test(client: DeepLensClient, name: str) -> admin_service_pb2.TestStorageLocationResponse:
    request = admin_service_pb2.TestStorageLocationRequest(name=name)
    return client.admin.TestStorageLocation(request, metadata=client.metadata, timeout=30)


@pytest.mark.stack
def test_credentials_are_write_only_and_sealed_at_rest(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, client = new_tenant(admin, connect)
    location = resources_pb2.StorageLocation(
        display_name="photos bucket",
        uri="s3://photos/2026",
        options={"endpoint": "http://127.0.0.1:1", "region": "eu-west-1"},
        credentials={"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": SECRET},
    )
    made = _create(client, tenant, "photos", location)
    assert not made.credentials  # type: ignore[attr-defined]
    assert dict(made.credential_hints) == {"access_key_id": "AKIA…MPLE", "secret_access_key": "wJal…EKEY"}  # type: ignore[attr-defined]
    got = client.admin.GetStorageLocation(
        admin_service_pb2.GetStorageLocationRequest(name=f"tenants/{tenant}/storageLocations/photos"),
        metadata=client.metadata,
    ).storage_location
    assert SECRET not in str(got)
    listed = client.admin.ListStorageLocations(
        admin_service_pb2.ListStorageLocationsRequest(parent=f"tenants/{tenant}"), metadata=client.metadata
    )
    assert SECRET not in str(listed)

    async def stored() -> bytes:
        conn = await asyncpg.connect(stack.config.endpoints["DEEPLENS_POSTGRES_DSN"])
        try:
            async with conn.transaction():  # row-level security: read in the tenant's scope
                await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", tenant)
                sql = "SELECT credentials FROM storage_locations WHERE tenant_id = $1"
                return bytes(await conn.fetchval(sql, tenant))
        finally:
            await conn.close()

    sealed = asyncio.run(stored())
    assert SECRET.encode() not in sealed
    assert b"AKIAIOSFODNN7EXAMPLE" not in sealed
    sealer = Sealer(stack.child_env()["DEEPLENS_MASTER_KEYS"])
    assert SECRET in sealer.open(sealed, bound_to=f"tenants/{tenant}/storageLocations/photos").decode()
    with pytest.raises(FailedPrecondition):  # the ciphertext is bound to its own resource
        sealer.open(sealed, bound_to="tenants/other/storageLocations/photos")

    reply = _test(client, f"tenants/{tenant}/storageLocations/photos")
    assert not reply.ok
    assert error_info(reply.error).reason == "STORAGE_UNREACHABLE"  # type: ignore[union-attr]


@pytest.mark.stack
def test_local_location_under_the_allowed_root_lists_objects(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, client = new_tenant(admin, connect)
    folder = stack.local_storage_root / tenant
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff")
    _create(client, tenant, "nas", resources_pb2.StorageLocation(uri=folder.as_uri()))
    reply = _test(client, f"tenants/{tenant}/storageLocations/nas")
    assert reply.ok
    assert reply.objects_listed == 1
    assert reply.latency.ToTimedelta().total_seconds() > 0

    with pytest.raises(grpc.RpcError) as exc:
        _create(client, tenant, "etc", resources_pb2.StorageLocation(uri="file:///etc"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(exc.value).reason == "LOCAL_PATH_NOT_ALLOWED"  # type: ignore[union-attr]
    escape = (folder / ".." / ".." / ".." / "postgres").as_uri()
    with pytest.raises(grpc.RpcError) as exc:
        _create(client, tenant, "escape", resources_pb2.StorageLocation(uri=escape))
    assert error_info(exc.value).reason == "LOCAL_PATH_NOT_ALLOWED"  # type: ignore[union-attr]


@pytest.mark.stack
def test_update_replaces_credentials_and_checks_etag_and_delete(admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, client = new_tenant(admin, connect)
    made = _create(
        client,
        tenant,
        "b",
        resources_pb2.StorageLocation(
            uri="s3://b", credentials={"access_key_id": "AKIAOLDOLDOLD1234", "secret_access_key": SECRET}
        ),
    )
    name = f"tenants/{tenant}/storageLocations/b"
    change = admin_service_pb2.UpdateStorageLocationRequest(
        storage_location=resources_pb2.StorageLocation(
            name=name,
            etag=made.etag,
            credentials={"access_key_id": "AKIANEWNEWNEW9876", "secret_access_key": "x" * 40},  # type: ignore[attr-defined]
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
    )
    updated = client.admin.UpdateStorageLocation(change, metadata=client.metadata).storage_location
    assert updated.credential_hints["access_key_id"] == "AKIA…9876"
    assert updated.uri == "s3://b"
    with pytest.raises(grpc.RpcError) as exc:
        client.admin.UpdateStorageLocation(change, metadata=client.metadata)  # the etag is stale now
    assert exc.value.code() == grpc.StatusCode.ABORTED
    client.admin.DeleteStorageLocation(
        admin_service_pb2.DeleteStorageLocationRequest(name=name), metadata=client.metadata
    )
    with pytest.raises(grpc.RpcError) as exc:
        _test(client, name)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.stack
def test_only_tenant_admins_of_the_tenant_manage_locations(admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, owner = new_tenant(admin, connect)
    _create(owner, tenant, "x", resources_pb2.StorageLocation(uri="s3://x"))
    editor = connect(owner.create_api_key(tenant, resources_pb2.ROLE_EDITOR)[1])
    _, stranger = new_tenant(admin, connect)
    for client, reason in ((editor, "ROLE_TOO_LOW"), (stranger, "TENANT_MISMATCH")):
        with pytest.raises(grpc.RpcError) as exc:
            _test(client, f"tenants/{tenant}/storageLocations/x")
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(exc.value).reason == reason  # type: ignore[union-attr]


STRICT = StoragePolicy(local_roots=(Path("/srv/images"),), allow_private_endpoints=False)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (LocationSpec("ftp://host/x"), "INVALID_STORAGE_URI"),
        (LocationSpec("s3://"), "INVALID_STORAGE_URI"),
        (LocationSpec("s3://b", options={"aws_allow_http": "true"}), "INVALID_STORAGE_OPTION"),
        (LocationSpec("s3://b", credentials={"account_key": "k"}), "INVALID_STORAGE_CREDENTIAL"),
        (LocationSpec("s3://b", options={"endpoint": "http://127.0.0.1:9000"}), "ENDPOINT_NOT_ALLOWED"),
        (LocationSpec("s3://b", options={"endpoint": "http://169.254.169.254"}), "ENDPOINT_NOT_ALLOWED"),
        (LocationSpec("s3://b", options={"endpoint": "file:///etc"}), "INVALID_STORAGE_OPTION"),
        (LocationSpec("https://10.0.0.8/images"), "ENDPOINT_NOT_ALLOWED"),
        (LocationSpec("file:///srv/images/../secrets"), "LOCAL_PATH_NOT_ALLOWED"),
    ],
)
def test_validation_refuses_what_a_tenant_must_not_configure(spec: LocationSpec, reason: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validate(spec, STRICT)
    assert exc.value.reason == reason


def test_validation_accepts_allowed_locations() -> None:
    assert validate(LocationSpec("file:///srv/images/tenant-a"), STRICT).uri == "file:///srv/images/tenant-a"
    assert validate(LocationSpec("gs://bucket/prefix", credentials={"service_account_key": "{}"}), STRICT)
    open_policy = StoragePolicy(local_roots=(), allow_private_endpoints=True)
    assert validate(LocationSpec("s3://b", options={"endpoint": "http://127.0.0.1:9000"}), open_policy)


def test_sealer_rotation_and_missing_key() -> None:
    old, new = Sealer.new_key("k1"), Sealer.new_key("k2")
    sealed = Sealer(old).seal(b"secret", bound_to="r")
    assert Sealer(f"{new},{old}").open(sealed, bound_to="r") == b"secret"  # old values open after rotation
    assert Sealer(f"{new},{old}").seal(b"s", bound_to="r").startswith(b"k2$")
    with pytest.raises(FailedPrecondition) as exc:
        Sealer("").seal(b"secret", bound_to="r")
    assert exc.value.reason == "MASTER_KEY_MISSING"
