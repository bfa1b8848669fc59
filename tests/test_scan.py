"""Scanning a storage location: everything under it is indexed; a re-scan picks up an added and a changed file,
removes the image of a deleted one, and leaves the unchanged ones alone."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import obstore
import pytest
from deeplens.client import DeepLensClient, error_info, operation_metadata
from deeplens.v1 import admin_service_pb2, ingest_service_pb2, resources_pb2
from deeplens_stack import Stack
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import field_mask_pb2
from PIL import Image

from tests import s3server
from tests.conftest import TEST_PORT_BASE, ClientFactory, new_tenant
from tests.s3server import S3Server

pytestmark = pytest.mark.stack


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _scan(client: DeepLensClient, name: str, prefix: str = "") -> tuple[operations_pb2.Operation, object]:
    op = client.ingest.ScanStorageLocation(
        ingest_service_pb2.ScanStorageLocationRequest(name=name, prefix=prefix), metadata=client.metadata
    )
    done = client.wait_operation(op.name, timeout=120)
    response = ingest_service_pb2.ScanStorageLocationResponse()
    if done.HasField("response"):
        done.response.Unpack(response)
    return done, response


def _add_folder(client: DeepLensClient, tenant: str, root: Path) -> None:
    """The folder ``root`` as the tenant's storage location ``nas``."""
    client.admin.CreateStorageLocation(
        admin_service_pb2.CreateStorageLocationRequest(
            parent=f"tenants/{tenant}",
            storage_location_id="nas",
            storage_location=resources_pb2.StorageLocation(uri=root.as_uri()),
        ),
        metadata=client.metadata,
    )


def _found(client: DeepLensClient, tenant: str, content: bytes) -> list[tuple[str, float]]:
    hits = client.search_images(f"tenants/{tenant}/collections/nas", image_content=content, top_k=10).results
    return [(h.image.storage_uri.rsplit("/", 1)[1], round(h.score, 3)) for h in hits]


def test_scan_then_incremental_rescan(stack: Stack, admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, client = new_tenant(admin, connect)
    root = stack.local_storage_root / tenant
    (root / "2026" / "june").mkdir(parents=True)
    files = {"a.jpg": _jpeg(1), "2026/b.jpg": _jpeg(2), "2026/june/c.JPG": _jpeg(3), "d.png": _jpeg(4)}
    for path, data in files.items():
        (root / path).write_bytes(data)
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    location = f"tenants/{tenant}/storageLocations/nas"
    _add_folder(client, tenant, root)

    done, first = _scan(client, location)
    meta = operation_metadata(done)
    assert not done.HasField("error")
    assert (first.listed, first.added, first.changed, first.unchanged, first.deleted) == (5, 5, 0, 0, 0)  # type: ignore[attr-defined]
    assert (meta.total, meta.succeeded, meta.failed) == (5, 4, 1)
    assert error_info(meta.failures[0].status).reason == "IMAGE_UNDECODABLE"  # type: ignore[union-attr]
    for path, data in files.items():
        assert _found(client, tenant, data)[0] == (path.rsplit("/", 1)[-1], 1.0)

    # Add one, change one, delete one; wait so modification times differ.
    time.sleep(1.1)
    (root / "2026" / "e.jpg").write_bytes(_jpeg(5))
    (root / "a.jpg").write_bytes(_jpeg(6))
    os.remove(root / "2026" / "b.jpg")
    done, second = _scan(client, location)
    assert (second.listed, second.added, second.changed, second.unchanged, second.deleted) == (5, 1, 1, 3, 1)  # type: ignore[attr-defined]
    assert operation_metadata(done).total == 2
    assert _found(client, tenant, _jpeg(5))[0][0] == "e.jpg"
    assert _found(client, tenant, _jpeg(6))[0] == ("a.jpg", 1.0)  # the changed file's new content
    assert all(score < 0.99 for _, score in _found(client, tenant, _jpeg(1)))  # its old content is gone
    assert all(name != "b.jpg" for name, _ in _found(client, tenant, _jpeg(2)))  # the deleted file is gone

    done, third = _scan(client, location, prefix="2026/june")
    assert (third.listed, third.added, third.unchanged, third.deleted) == (1, 0, 1, 0)  # type: ignore[attr-defined]
    assert operation_metadata(done).total == 0


def test_scanned_objects_are_held_to_the_tenants_own_image_limits(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    limits = resources_pb2.TenantLimits(max_image_bytes=50_000, max_image_pixels=300_000)
    tenant, client = new_tenant(admin, connect, limits=limits)
    root = stack.local_storage_root / tenant
    root.mkdir(parents=True)
    (root / "small.jpg").write_bytes(_jpeg(7))
    noise = np.random.default_rng(8).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "heavy.jpg", quality=95)  # under the server's limits, over the tenant's
    Image.new("RGB", (1000, 1000), (40, 90, 160)).save(root / "wide.png")  # a few kB, a million pixels
    assert (root / "heavy.jpg").stat().st_size > 50_000 > (root / "wide.png").stat().st_size
    _add_folder(client, tenant, root)
    done, _ = _scan(client, f"tenants/{tenant}/storageLocations/nas")
    meta = operation_metadata(done)
    assert (meta.total, meta.succeeded, meta.failed) == (3, 1, 2)
    infos = [error_info(f.status) for f in meta.failures]
    assert {i.reason for i in infos if i is not None} == {"IMAGE_TOO_LARGE", "IMAGE_TOO_MANY_PIXELS"}
    assert [i.metadata["max_bytes"] for i in infos if i is not None and i.reason == "IMAGE_TOO_LARGE"] == ["50000"]
    assert _found(client, tenant, _jpeg(7))[0] == ("small.jpg", 1.0)


def test_scan_of_a_vanished_location_fails_with_a_reason(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, client = new_tenant(admin, connect)
    client.admin.CreateStorageLocation(
        admin_service_pb2.CreateStorageLocationRequest(
            parent=f"tenants/{tenant}",
            storage_location_id="s3",
            storage_location=resources_pb2.StorageLocation(
                uri="s3://nowhere/x", options={"endpoint": "http://127.0.0.1:1"}
            ),
        ),
        metadata=client.metadata,
    )
    done, _ = _scan(client, f"tenants/{tenant}/storageLocations/s3")
    assert done.HasField("error")
    assert error_info(done.error).reason == "STORAGE_UNREACHABLE"  # type: ignore[union-attr]
    with pytest.raises(grpc.RpcError) as exc:
        _scan(client, f"tenants/{tenant}/storageLocations/missing")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = s3server.start(Path(tmp_path_factory.mktemp("seaweedfs")), TEST_PORT_BASE - 3000)
    yield server
    server.stop()


def test_scan_of_an_s3_bucket_on_a_real_s3_server(s3: S3Server, admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, client = new_tenant(admin, connect)
    bucket = s3.bucket("photos")
    for n in range(6):
        obstore.put(bucket, f"shoot/{n:02d}.jpg", _jpeg(100 + n))
    obstore.put(bucket, "shoot/readme.md", b"# not an image")
    location = resources_pb2.StorageLocation(
        uri="s3://photos/shoot",
        options={"endpoint": s3.endpoint, "region": "us-east-1"},
        credentials={"access_key_id": s3server.ACCESS_KEY, "secret_access_key": s3server.SECRET_KEY},
    )
    client.admin.CreateStorageLocation(
        admin_service_pb2.CreateStorageLocationRequest(
            parent=f"tenants/{tenant}", storage_location_id="nas", storage_location=location
        ),
        metadata=client.metadata,
    )
    name = f"tenants/{tenant}/storageLocations/nas"
    tested = client.admin.TestStorageLocation(
        admin_service_pb2.TestStorageLocationRequest(name=name), metadata=client.metadata
    )
    assert tested.ok
    assert tested.objects_listed == 1

    done, first = _scan(client, name)
    assert (first.listed, first.added) == (6, 6)  # type: ignore[attr-defined]
    assert operation_metadata(done).succeeded == 6
    hit = client.search_images(f"tenants/{tenant}/collections/nas", image_content=_jpeg(103), top_k=1).results[0]
    assert hit.image.storage_uri == "s3://photos/shoot/03.jpg"
    assert hit.score > 0.99

    obstore.delete(bucket, "shoot/00.jpg")
    obstore.put(bucket, "shoot/06.jpg", _jpeg(106))
    _, second = _scan(client, name)
    assert (second.listed, second.added, second.unchanged, second.deleted) == (6, 1, 5, 1)  # type: ignore[attr-defined]

    wrong = admin_service_pb2.UpdateStorageLocationRequest(
        storage_location=resources_pb2.StorageLocation(
            name=name, credentials={"access_key_id": s3server.ACCESS_KEY, "secret_access_key": "wrong-secret-value"}
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
    )
    client.admin.UpdateStorageLocation(wrong, metadata=client.metadata)
    refused = client.admin.TestStorageLocation(
        admin_service_pb2.TestStorageLocationRequest(name=name), metadata=client.metadata
    )
    assert not refused.ok
    assert error_info(refused.error).reason in {"STORAGE_ACCESS_DENIED", "STORAGE_UNREACHABLE"}  # type: ignore[union-attr]
