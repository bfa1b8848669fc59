"""Trying to break isolation and robustness: randomized cross-tenant attempts, fuzzed requests and hostile files.

Every attempt must end in a clear status (never INTERNAL or UNKNOWN), leak nothing, and leave the server
serving with stable memory.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from typing import Any

import grpc
import psutil
import pytest
from deeplens.client import DeepLensClient, OperationFailed, error_info
from deeplens.v1 import admin_service_pb2, resources_pb2, search_service_pb2
from deeplens_stack import Stack
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack
UNLIMITED = resources_pb2.TenantLimits(requests_per_second=100_000)
CLEAR_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
}


def _png(width: int, height: int, color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG header promising width x height 8-bit grey pixels, with a few bytes of data: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _server_rss(stack: Stack) -> int:
    record = stack.procs.get("server")
    assert record is not None
    return int(psutil.Process(record.pid).memory_info().rss)


def _assert_serving(stack: Stack) -> None:
    with grpc.insecure_channel(stack.config.grpc_target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def victims(admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]) -> list[dict[str, Any]]:
    """Two tenants with images, operations and keys — the targets."""
    found = []
    for names in (("astronaut", "coffee"), ("rocket", "chelsea")):
        tenant, client = new_tenant(admin, connect, limits=UNLIMITED)
        parent = f"tenants/{tenant}/collections/private"
        ops = [
            client.wait_operation(client.ingest_image(parent, photos[n], image_id=n).name, timeout=120) for n in names
        ]
        key, _ = client.create_api_key(tenant, resources_pb2.ROLE_VIEWER)
        found.append({"tenant": tenant, "parent": parent, "images": [f"{parent}/images/{n}" for n in names],
                      "ops": [op.name for op in ops], "key": key.name, "photos": names})  # fmt: skip
    return found


def test_randomized_cross_tenant_attempts_leak_nothing(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes], victims: list[dict[str, Any]]
) -> None:
    rng = random.Random(20261123)
    attackers = []
    for role in (resources_pb2.ROLE_VIEWER, resources_pb2.ROLE_EDITOR, resources_pb2.ROLE_TENANT_ADMIN):
        tenant, owner = new_tenant(admin, connect, limits=UNLIMITED)
        owner.index_image(f"tenants/{tenant}/collections/private", photos["moon"])
        attackers.append((tenant, connect(owner.create_api_key(tenant, role)[1])))
    victim_names = {name for v in victims for name in v["images"]}

    def actions(me: str, client: DeepLensClient, v: dict[str, Any]) -> list[Callable[[], Any]]:
        md = client.metadata
        t, parent = v["tenant"], v["parent"]
        return [
            lambda: client.search_images(f"tenants/{t}", image_name=rng.choice(v["images"])),
            lambda: client.search_images(f"tenants/{me}", image_name=rng.choice(v["images"])),
            lambda: client.search_images(parent, image_content=photos["moon"], top_k=50),
            lambda: client.get_tenant(f"tenants/{t}"),
            lambda: client.get_operation(rng.choice(v["ops"])),
            lambda: list(client.watch_operation(rng.choice(v["ops"]), timeout=10)),
            lambda: client.ingest_image(parent, photos["moon"]),
            lambda: client.create_api_key(t, resources_pb2.ROLE_TENANT_ADMIN),
            lambda: client.admin.ListApiKeys(admin_service_pb2.ListApiKeysRequest(parent=f"tenants/{t}"), metadata=md),
            lambda: client.admin.RevokeApiKey(admin_service_pb2.RevokeApiKeyRequest(name=v["key"]), metadata=md),
            lambda: client.admin.ListAuditEvents(
                admin_service_pb2.ListAuditEventsRequest(parent=f"tenants/{t}"), metadata=md
            ),
            lambda: client.admin.ListCollections(
                admin_service_pb2.ListCollectionsRequest(parent=f"tenants/{t}"), metadata=md
            ),
            lambda: client.admin.GetCollection(admin_service_pb2.GetCollectionRequest(name=parent), metadata=md),
            lambda: client.admin.DeleteCollection(
                admin_service_pb2.DeleteCollectionRequest(name=parent, force=True), metadata=md
            ),
            lambda: client.admin.DeleteTenant(
                admin_service_pb2.DeleteTenantRequest(name=f"tenants/{t}", force=True), metadata=md
            ),
            lambda: client.admin.CreateCollection(
                admin_service_pb2.CreateCollectionRequest(parent=f"tenants/{t}", collection_id="pwned"), metadata=md
            ),
        ]

    leaks, denied, own_searches = [], 0, 0
    for attempt in range(1000):
        me, client = rng.choice(attackers)
        victim = rng.choice(victims)
        if attempt % 10 == 0:  # the victim's exact bytes, searched in the attacker's own tenant
            reply = client.search_images(f"tenants/{me}", image_content=photos[rng.choice(victim["photos"])], top_k=100)
            leaks += [r.image.name for r in reply.results if r.image.name in victim_names or me not in r.image.name]
            own_searches += 1
            continue
        action = rng.choice(actions(me, client, victim))
        try:
            result = action()
        except grpc.RpcError as err:
            assert err.code() in (grpc.StatusCode.PERMISSION_DENIED,), (err.code(), err.details())
            assert error_info(err).reason in {"TENANT_MISMATCH", "ROLE_TOO_LOW"}  # type: ignore[union-attr]
            denied += 1
            continue
        leaks.append(repr(result)[:200])
    assert leaks == []
    assert denied + own_searches == 1000
    # The victims are intact.
    for victim in victims:
        assert admin.get_tenant(f"tenants/{victim['tenant']}").delete_time.seconds == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_fuzzed_bytes_only_ever_decode_or_get_a_reason(data: bytes, seed: int) -> None:
    from deeplens_server.errors import ImageRejected
    from deeplens_server.imaging import ImageLimits, decode_image

    rng = random.Random(seed)
    base = bytearray(_SMALL_JPEG if seed % 2 else _SMALL_PNG)
    for _ in range(rng.randint(1, 8)):  # mutate a real image: flip, drop or splice bytes
        if not base:
            break
        pos = rng.randrange(len(base))
        choice = rng.random()
        if choice < 0.5:
            base[pos] = rng.randrange(256)
        elif choice < 0.75:
            del base[pos : pos + rng.randint(1, 64)]
        else:
            base[pos:pos] = data[:64]
    for candidate in (data, bytes(base)):
        try:
            decode_image(candidate, ImageLimits(max_bytes=1 << 20, max_pixels=4_000_000))
        except ImageRejected as exc:
            assert exc.reason.startswith("IMAGE_")


_SMALL_PNG = _png(48, 32)
_SMALL_JPEG = (
    lambda: (lambda out: (Image.new("RGB", (48, 32), (200, 30, 60)).save(out, format="JPEG"), out.getvalue())[1])(
        io.BytesIO()
    )
)()


_names = st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.sampled_from(
    ["tenants/", "tenants/a/collections/b", "tenants/../collections/x", "tenants/a\x00b", "tenants/%2e%2e", "*", ""]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parent=_names,
    name=_names,
    image_id=st.text(max_size=140),
    tags=st.lists(st.text(max_size=150), max_size=70),
    top_k=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    min_score=st.floats(allow_nan=True, allow_infinity=True, width=32),
    token=st.text(max_size=60),
    size=st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
def test_fuzzed_request_fields_get_clear_statuses(
    fuzz_client: DeepLensClient,
    parent: str,
    name: str,
    image_id: str,
    tags: list[str],
    top_k: int,
    min_score: float,
    token: str,
    size: int,
) -> None:
    client = fuzz_client
    md = client.metadata
    calls: list[Callable[[], Any]] = [
        lambda: client.ingest_image(parent, _SMALL_PNG, image_id=image_id, tags=tags, request_id=token),
        lambda: client.search.SearchImages(
            search_service_pb2.SearchImagesRequest(parent=parent, image_name=name, top_k=top_k, min_score=min_score),
            metadata=md,
        ),
        lambda: client.get_operation(name),
        lambda: client.get_tenant(name),
        lambda: client.admin.ListCollections(
            admin_service_pb2.ListCollectionsRequest(parent=parent, page_size=size, page_token=token), metadata=md
        ),
        lambda: client.admin.ListAuditEvents(
            admin_service_pb2.ListAuditEventsRequest(parent=parent, page_size=size, page_token=token), metadata=md
        ),
        lambda: client.admin.RevokeApiKey(admin_service_pb2.RevokeApiKeyRequest(name=name), metadata=md),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as err:
            assert err.code() in CLEAR_CODES, (err.code(), err.details())
            assert error_info(err) is not None


@pytest.fixture(scope="module")
def fuzz_client(admin: DeepLensClient, connect: ClientFactory) -> DeepLensClient:
    _, client = new_tenant(admin, connect, limits=UNLIMITED)
    return client


def test_hostile_files(stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]) -> None:
    tenant, client = new_tenant(admin, connect, limits=UNLIMITED)
    parent = f"tenants/{tenant}/collections/hostile"
    rss_before = _server_rss(stack)
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(photos["astronaut"])).convert("RGB").save(jpeg, format="JPEG")
    refused_at_the_door = {
        "zero bytes": (b"", "IMAGE_EMPTY"),
        "decompression bomb (20000 x 20000 in 70 bytes)": (_png_bomb(20_000, 20_000), "IMAGE_TOO_MANY_PIXELS"),
        "html with an image extension": (b"<html><script>alert(1)</script></html>", "IMAGE_UNDECODABLE"),
        "GIF/JavaScript polyglot": (b"GIF89a/*\x00\x00\x00\x00*/=1;alert(1);", "IMAGE_UNDECODABLE"),
        "over the per-image byte limit": (jpeg.getvalue() + b"\x00" * (33 * 1024 * 1024), "IMAGE_TOO_LARGE"),
    }
    for label, (content, reason) in refused_at_the_door.items():
        with pytest.raises(grpc.RpcError) as exc:
            client.ingest_image(parent, content, image_id="hostile.jpg")
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert error_info(exc.value).reason == reason, label  # type: ignore[union-attr]

    # Oversized gRPC message: refused by the transport, and the server goes on.
    with pytest.raises(grpc.RpcError) as exc:
        client.ingest_image(parent, b"\xff" * (41 * 1024 * 1024))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Accepted at the door, judged by the worker: each ends with a clear outcome, none crashes anything.
    truncated = jpeg.getvalue()[: len(jpeg.getvalue()) // 2]
    polyglot = jpeg.getvalue() + b"PK\x03\x04" + b"\x00" * 64 + b"<html>appended archive</html>"
    outcomes = {}
    for label, content in {
        "truncated JPEG": truncated,
        "JPEG with an appended archive (polyglot)": polyglot,
        "1 x 100000 image": _png(1, 100_000),
        "100000 x 1 image": _png(100_000, 1),
        "PNG bytes named .jpg": _png(64, 64),
    }.items():
        try:
            client.index_image(parent, content, image_id=f"h{len(outcomes)}.jpg", timeout=120)
            outcomes[label] = "indexed"
        except OperationFailed as failed:
            outcomes[label] = failed.reason
    assert outcomes == {
        "truncated JPEG": "IMAGE_UNDECODABLE",
        "JPEG with an appended archive (polyglot)": "indexed",
        "1 x 100000 image": "indexed",
        "100000 x 1 image": "indexed",
        "PNG bytes named .jpg": "indexed",
    }
    formats = {
        r.image.name.rsplit("/", 1)[1]: r.image.format
        for r in client.search_images(parent, image_content=_png(64, 64), top_k=10).results
    }
    assert formats["h4.jpg"] == "PNG"  # the content decides, not the name
    _assert_serving(stack)
    growth = _server_rss(stack) - rss_before
    assert growth < 200 * 1024 * 1024, f"server RSS grew by {growth / 1e6:.0f} MB"
