"""Ingest by URL from a real HTTP server on loopback: redirects, wrong content types, size caps, missing pages,
and the refusal of private addresses when the operator does not allow them."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
from deeplens.client import DeepLensClient, error_info, ingest_response
from deeplens.v1 import ingest_service_pb2, resources_pb2, search_service_pb2
from deeplens_server.errors import InvalidArgument
from deeplens_server.fetch import check_url
from deeplens_server.storage import StoragePolicy
from PIL import Image

from tests.conftest import ClientFactory, new_tenant


def _jpeg() -> bytes:
    pixels = np.random.default_rng(21).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


PHOTO = _jpeg()


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {
        "/photo.jpg": (200, {"Content-Type": "image/jpeg"}, PHOTO),
        "/moved": (302, {"Location": "/photo.jpg"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/page.html": (200, {"Content-Type": "text/html"}, b"<html>hi</html>"),
        "/huge.jpg": (200, {"Content-Type": "image/jpeg"}, b"\xff" * (33 * 1024 * 1024)),
    }

    def do_GET(self) -> None:
        status, headers, body = self.routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"no"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _ingest(client: DeepLensClient, tenant: str, url: str) -> object:
    request = ingest_service_pb2.IngestImageRequest(parent=f"tenants/{tenant}/collections/web", source_uri=url)
    op = client.ingest.IngestImage(request, metadata=client.metadata, timeout=30)
    return client.wait_operation(op.name, timeout=120)


@pytest.mark.stack
def test_ingest_by_url(web: str, admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, client = new_tenant(admin, connect)
    done = _ingest(client, tenant, f"{web}/moved")  # one redirect, then the photo
    image = ingest_response(done).image  # type: ignore[arg-type]
    assert image.storage_uri == f"{web}/moved"  # the URL as given: redirect targets are often short-lived
    assert (image.width, image.height, image.format) == (160, 120, "JPEG")
    hits = client.search_images(f"tenants/{tenant}", image_content=PHOTO, top_k=1).results
    assert hits[0].image.name == image.name
    # Search by URL: the server fetches the query image under the same rules.
    by_url = client.search.SearchImages(
        search_service_pb2.SearchImagesRequest(parent=f"tenants/{tenant}", image_uri=f"{web}/photo.jpg", top_k=1),
        metadata=client.metadata,
    ).results
    assert by_url[0].image.name == image.name
    assert by_url[0].score > 0.99
    with pytest.raises(grpc.RpcError) as not_image:
        client.search.SearchImages(
            search_service_pb2.SearchImagesRequest(parent=f"tenants/{tenant}", image_uri=f"{web}/page.html"),
            metadata=client.metadata,
        )
    assert error_info(not_image.value).reason == "URL_NOT_AN_IMAGE"  # type: ignore[union-attr]

    outcomes = {}
    for path in ("/loop", "/page.html", "/huge.jpg", "/missing.jpg"):
        failed = _ingest(client, tenant, f"{web}{path}")
        outcomes[path] = error_info(failed.error).reason  # type: ignore[attr-defined,union-attr]
    assert outcomes == {
        "/loop": "TOO_MANY_REDIRECTS",
        "/page.html": "URL_NOT_AN_IMAGE",
        "/huge.jpg": "IMAGE_TOO_LARGE",
        "/missing.jpg": "URL_NOT_FETCHABLE",
    }


@pytest.mark.stack
def test_queries_are_held_to_the_tenants_own_image_limits(
    web: str, admin: DeepLensClient, connect: ClientFactory
) -> None:
    """A search or duplicate query, by URL or by bytes, is refused over the tenant's byte limit, not only the
    server's: the limit the tenant's images are held to."""
    limits = resources_pb2.TenantLimits(max_image_bytes=len(PHOTO) - 1)
    tenant, client = new_tenant(admin, connect, limits=limits)
    parent = f"tenants/{tenant}"
    calls = {
        "search by URL": lambda: client.search.SearchImages(
            search_service_pb2.SearchImagesRequest(parent=parent, image_uri=f"{web}/photo.jpg"),
            metadata=client.metadata,
        ),
        "search by bytes": lambda: client.search_images(parent, image_content=PHOTO),
        "duplicates by bytes": lambda: client.search.FindDuplicates(
            search_service_pb2.FindDuplicatesRequest(parent=parent, image_content=PHOTO), metadata=client.metadata
        ),
    }
    for what, call in calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        info = error_info(refused.value)  # type: ignore[arg-type]
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what  # type: ignore[attr-defined]
        assert info is not None, what
        assert info.reason == "IMAGE_TOO_LARGE", what
        assert info.metadata["max_bytes"] == str(len(PHOTO) - 1), what

    other, theirs = new_tenant(admin, connect)  # no limit of its own: the same query is answered
    assert (
        theirs.search.SearchImages(
            search_service_pb2.SearchImagesRequest(parent=f"tenants/{other}", image_uri=f"{web}/photo.jpg"),
            metadata=theirs.metadata,
        ).results
        == []
    )


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/x.jpg", "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/a.png",
     "http://[::1]/a.png", "ftp://example.com/a.jpg", "http:///nohost"],
)  # fmt: skip
def test_private_and_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_url(url, StoragePolicy(local_roots=(), allow_private_endpoints=False))
    assert exc.value.reason in {"ENDPOINT_NOT_ALLOWED", "INVALID_URL"}
