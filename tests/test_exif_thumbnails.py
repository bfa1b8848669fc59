"""EXIF facts and thumbnails: read from the one decode, stored with the image, thumbnails fetchable by RPC."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from deeplens.client import DeepLensClient, error_info
from deeplens.v1 import resources_pb2, search_service_pb2
from deeplens_server.imaging import ImageLimits, decode_image, read_exif
from PIL import Image

from tests.conftest import ClientFactory, new_tenant


def _photo_with_exif(size: tuple[int, int] = (1600, 1200)) -> bytes:
    pixels = np.random.default_rng(11).integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).resize(size)
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS R5\x00"
    exif[0x0112] = 1
    exif.get_ifd(0x8769)[0x9003] = "2024:06:01 12:34:56"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 22.0, 12.0), "W", (4.0, 53.0, 24.0)
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif, quality=90)
    return out.getvalue()


def test_exif_facts_are_read_and_bad_ones_skipped() -> None:
    decoded = decode_image(_photo_with_exif(), ImageLimits(max_bytes=1 << 24, max_pixels=10_000_000))
    facts = decoded.exif
    assert (facts["camera_make"], facts["camera_model"], facts["orientation"]) == ("Canon", "EOS R5", 1)
    assert facts["taken_time"] == "2024-06-01T12:34:56+00:00"
    assert facts["latitude"] == pytest.approx(52.37, abs=1e-3)
    assert facts["longitude"] == pytest.approx(-4.89, abs=1e-3)
    broken = Image.new("RGB", (8, 8))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "not a date"
    exif.get_ifd(0x8825)[2] = (1.0, 0.0)  # malformed latitude
    out = io.BytesIO()
    broken.save(out, format="JPEG", exif=exif)
    assert read_exif(Image.open(io.BytesIO(out.getvalue()))) == {}


@pytest.mark.stack
def test_image_carries_exif_and_serves_thumbnails(admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, client = new_tenant(admin, connect)
    name = f"tenants/{tenant}/collections/c/images/canon"
    image = client.index_image(f"tenants/{tenant}/collections/c", _photo_with_exif(), image_id="canon")
    assert (image.exif.camera_make, image.exif.camera_model) == ("Canon", "EOS R5")
    assert image.exif.has_location
    assert image.exif.taken_time.ToDatetime().year == 2024
    assert list(image.thumbnails) == [
        resources_pb2.THUMBNAIL_SIZE_150,
        resources_pb2.THUMBNAIL_SIZE_300,
        resources_pb2.THUMBNAIL_SIZE_600,
    ]
    for size, pixels in ((resources_pb2.THUMBNAIL_SIZE_150, 150), (resources_pb2.THUMBNAIL_SIZE_600, 600), (0, 300)):
        thumb = client.search.GetImageThumbnail(
            search_service_pb2.GetImageThumbnailRequest(name=name, size=size), metadata=client.metadata
        )
        assert thumb.mime_type == "image/webp"
        assert thumb.width == pixels
        assert abs(thumb.height - pixels * 3 / 4) <= 1  # the 4:3 aspect, rounded
        with Image.open(io.BytesIO(thumb.content)) as decoded:
            assert (decoded.format, decoded.size) == ("WEBP", (thumb.width, thumb.height))

    _, stranger = new_tenant(admin, connect)
    with pytest.raises(grpc.RpcError) as exc:
        stranger.search.GetImageThumbnail(
            search_service_pb2.GetImageThumbnailRequest(name=name), metadata=stranger.metadata
        )
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as exc:
        client.search.GetImageThumbnail(
            search_service_pb2.GetImageThumbnailRequest(name=f"tenants/{tenant}/collections/c/images/nope"),
            metadata=client.metadata,
        )
    assert error_info(exc.value).reason == "IMAGE_NOT_FOUND"  # type: ignore[union-attr]
