"""Ingest and search over gRPC on the real stack: progress streams, edited copies found, bad input refused."""

from __future__ import annotations

import io

import grpc
import pytest
from deeplens.client import DeepLensClient, error_info, ingest_response, operation_metadata
from deeplens.v1 import resources_pb2
from google.longrunning import operations_pb2
from PIL import Image

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack

STATE = resources_pb2.OperationState
EDITS = {
    "resized": {"crop": 0.0, "scale": 0.5, "quality": 95},
    "cropped": {"crop": 0.1, "scale": 1.0, "quality": 95},
    "recompressed": {"crop": 0.0, "scale": 1.0, "quality": 35},
    "all-three": {"crop": 0.08, "scale": 0.6, "quality": 70},
}
QUERY_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble-deep-field", "coins", "page")


def _edit(data: bytes, *, crop: float, scale: float, quality: int) -> bytes:
    from deeplens_stack.photos import edited_copy

    return edited_copy(data, crop=crop, scale=scale, quality=quality)


def _ingest_all(client: DeepLensClient, parent: str, photos: dict[str, bytes]) -> dict[str, operations_pb2.Operation]:
    ops = {name: client.ingest_image(parent, data, image_id=name, tags=["sample"]) for name, data in photos.items()}
    return {name: client.wait_operation(op.name, timeout=120) for name, op in ops.items()}


@pytest.fixture(scope="module")
def library(admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]) -> tuple[DeepLensClient, str]:
    """A tenant holding every sample photo in one collection."""
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/photos"
    done = _ingest_all(client, parent, photos)
    failed = {n: op.error.message for n, op in done.items() if op.HasField("error")}
    assert not failed
    return client, parent


def test_progress_stream_reaches_succeeded(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    op = client.ingest_image(f"tenants/{tenant}/collections/c1", photos["coffee"], image_id="coffee", tags=["b", "a"])
    first = operation_metadata(op)
    assert op.name.startswith(f"tenants/{tenant}/operations/")
    assert not op.done
    assert first.state == STATE.OPERATION_STATE_PENDING
    assert first.total == 1

    updates = list(client.watch_operation(op.name, timeout=120))
    states = [operation_metadata(u).state for u in updates]
    assert updates[-1].done
    assert states[-1] == STATE.OPERATION_STATE_SUCCEEDED
    assert all(not u.done for u in updates[:-1])
    assert states == sorted(states)  # never goes backwards
    meta = operation_metadata(updates[-1])
    assert (meta.processed, meta.succeeded, meta.failed) == (1, 1, 0)
    assert meta.HasField("end_time")

    image = ingest_response(updates[-1]).image
    assert image.name == f"tenants/{tenant}/collections/c1/images/coffee"
    assert (image.width, image.height, image.format) == (600, 400, "PNG")
    assert len(image.sha256) == 64
    assert len(image.phash) == 16
    assert len(image.dhash) == 16
    assert list(image.tags) == ["a", "b"]
    assert image.model == "efficientnet_lite0@1"
    # The standard Operations service reports the same final state.
    assert client.get_operation(op.name) == updates[-1]


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("photo", QUERY_PHOTOS)
def test_edited_copy_finds_its_original_first(
    library: tuple[DeepLensClient, str], photos: dict[str, bytes], photo: str, edit: str
) -> None:
    client, parent = library
    reply = client.search_images(parent, image_content=_edit(photos[photo], **EDITS[edit]), top_k=5)
    names = [r.image.name.rsplit("/", 1)[1] for r in reply.results]
    assert names[0] == photo, names
    scores = [r.score for r in reply.results]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0.8
    assert reply.model == "efficientnet_lite0@1"


def test_search_by_image_name_excludes_the_image_and_finds_its_twin(
    library: tuple[DeepLensClient, str],
) -> None:
    client, parent = library
    reply = client.search_images(parent, image_name=f"{parent}/images/motorcycle-left", top_k=3)
    names = [r.image.name.rsplit("/", 1)[1] for r in reply.results]
    assert "motorcycle-left" not in names
    assert names[0] == "motorcycle-right"  # the other half of the stereo pair


def test_search_respects_top_k_and_min_score(library: tuple[DeepLensClient, str], photos: dict[str, bytes]) -> None:
    client, parent = library
    assert len(client.search_images(parent, image_content=photos["moon"], top_k=3).results) == 3
    strict = client.search_images(parent, image_content=photos["moon"], top_k=20, min_score=0.99)
    assert [r.image.name.rsplit("/", 1)[1] for r in strict.results] == ["moon"]


def test_search_over_whole_tenant_and_other_collection(
    library: tuple[DeepLensClient, str], photos: dict[str, bytes]
) -> None:
    client, parent = library
    tenant_scope = parent.rsplit("/collections/", 1)[0]
    assert client.search_images(tenant_scope, image_content=photos["astronaut"], top_k=1).results[0].image.name == (
        f"{parent}/images/astronaut"
    )
    other = client.search_images(f"{tenant_scope}/collections/empty", image_content=photos["astronaut"], top_k=5)
    assert list(other.results) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "IMAGE_EMPTY"),
        (b"GIF89a but not really a gif", "IMAGE_UNDECODABLE"),
        (b"<html><body>not an image</body></html>", "IMAGE_UNDECODABLE"),
        (bytes(range(256)) * 64, "IMAGE_UNDECODABLE"),
    ],
)
def test_corrupt_bytes_are_invalid_argument_and_server_keeps_serving(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes], content: bytes, reason: str
) -> None:
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/c"
    with pytest.raises(grpc.RpcError) as exc:
        client.ingest_image(parent, content)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(exc.value)
    assert info is not None
    assert (info.reason, info.domain) == (reason, "deeplens.dev")

    with pytest.raises(grpc.RpcError) as exc:
        client.search_images(parent, image_content=content)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(exc.value).reason == reason  # type: ignore[union-attr]

    client.index_image(parent, photos["brick"], timeout=120)


def test_image_broken_after_its_header_fails_the_operation_with_a_reason(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/c"
    with Image.open(io.BytesIO(photos["astronaut"])) as src:
        out = io.BytesIO()
        src.convert("RGB").save(out, format="JPEG")
    truncated = out.getvalue()[: len(out.getvalue()) // 3]
    good = client.ingest_image(parent, photos["grass"], image_id="grass")
    bad = client.ingest_image(parent, truncated, image_id="broken")
    bad_done = client.wait_operation(bad.name, timeout=120)
    assert bad_done.done
    assert bad_done.HasField("error")
    assert bad_done.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error_info(bad_done.error).reason == "IMAGE_UNDECODABLE"  # type: ignore[union-attr]
    meta = operation_metadata(bad_done)
    assert (meta.state, meta.failed, meta.succeeded) == (STATE.OPERATION_STATE_FAILED, 1, 0)
    assert not client.wait_operation(good.name, timeout=120).HasField("error")
    names = [r.image.name for r in client.search_images(parent, image_content=photos["grass"], top_k=5).results]
    assert names == [f"{parent}/images/grass"]


def test_bad_requests_get_field_level_reasons(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    cases = [
        (lambda: client.ingest_image("tenants/x", photos["moon"]), "INVALID_RESOURCE_NAME"),
        (lambda: client.ingest_image(f"tenants/{tenant}/collections/c", photos["moon"], image_id="a b"),
         "INVALID_IMAGE_ID"),
        (lambda: client.search_images(f"tenants/{tenant}", image_content=photos["moon"], top_k=5000),
         "INVALID_TOP_K"),
        (lambda: client.search_images(f"tenants/{tenant}", image_content=photos["moon"], min_score=3),
         "INVALID_MIN_SCORE"),
        (lambda: client.search_images(f"tenants/{tenant}"), "MISSING_QUERY"),
    ]  # fmt: skip
    for call, reason in cases:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(exc.value).reason == reason  # type: ignore[union-attr]


def test_request_id_makes_ingest_idempotent(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/c"
    first = client.ingest_image(parent, photos["text"], request_id="upload-42")
    again = client.ingest_image(parent, photos["text"], request_id="upload-42")
    assert first.name == again.name
    client.wait_operation(first.name, timeout=120)
    # Same bytes without a request id: a new operation, but the same image (content-addressed id).
    second = client.index_image(parent, photos["text"], timeout=120)
    assert second.name == ingest_response(client.get_operation(first.name)).image.name
    hits = client.search_images(parent, image_content=photos["text"], top_k=10).results
    assert len(hits) == 1


def test_unknown_tenant_and_operation_are_not_found(admin: DeepLensClient, connect: ClientFactory) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        admin.get_tenant("tenants/nobody-here")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(exc.value).reason == "TENANT_NOT_FOUND"  # type: ignore[union-attr]
    tenant, client = new_tenant(admin, connect)
    with pytest.raises(grpc.RpcError) as exc:
        client.get_operation(f"tenants/{tenant}/operations/0123456789abcdef")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
