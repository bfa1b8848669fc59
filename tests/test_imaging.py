"""Decoding, limits, hashing and model input, on real photos and hand-made bad files."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from deeplens_server.errors import ImageRejected
from deeplens_server.imaging import (
    DIHEDRAL,
    HASH_GRID,
    MODEL_INPUT_SIZE,
    WORKING_SIZE,
    ImageLimits,
    PerceptualHashes,
    _draft_box,
    decode_image,
    inspect_image,
    model_input,
    perceptual_hashes,
    thumbnails,
    trim_border,
)
from PIL import Image

LIMITS = ImageLimits(max_bytes=10 * 1024 * 1024, max_pixels=50_000_000)


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _reason(exc: pytest.ExceptionInfo[ImageRejected]) -> str:
    return exc.value.reason


def test_decodes_every_supported_format(photos: dict[str, bytes]) -> None:
    with Image.open(io.BytesIO(photos["astronaut"])) as src:
        rgb = src.convert("RGB")
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"):
        decoded = decode_image(_encode(rgb, fmt), LIMITS)
        assert decoded.header.format == fmt
        assert (decoded.header.width, decoded.header.height) == rgb.size
        assert decoded.working.mode == "RGB"


def test_jpeg_is_decoded_at_reduced_size_but_reports_true_size() -> None:
    big = Image.new("RGB", (4000, 3000), (120, 30, 200))
    decoded = decode_image(_encode(big, "JPEG"), LIMITS)
    assert (decoded.header.width, decoded.header.height) == (4000, 3000)
    assert max(decoded.working.size) <= WORKING_SIZE


def test_exif_orientation_is_applied_before_hashing() -> None:
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 150, 100))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    decoded = decode_image(_encode(img, "JPEG", exif=exif), LIMITS)
    assert (decoded.header.width, decoded.header.height) == (100, 300)
    assert decoded.working.size[0] < decoded.working.size[1]
    top, bottom = decoded.working.getpixel((50, 10)), decoded.working.getpixel((50, 290))
    assert isinstance(top, tuple)
    assert isinstance(bottom, tuple)
    assert top[0] > 200 > bottom[0]  # the white half is now on top


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    decoded = decode_image(_encode(img, "PNG"), LIMITS)
    assert decoded.working.getpixel((10, 10)) == (255, 255, 255)


def test_model_input_shape_and_type(photos: dict[str, bytes]) -> None:
    arr = model_input(decode_image(photos["coffee"], LIMITS).working)
    assert arr.shape == (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3)
    assert arr.dtype == np.uint8
    assert 20 < float(arr.mean()) < 235


def test_a_landscape_jpeg_is_drafted_at_half_size_not_decoded_whole() -> None:
    # A 3:2 photo: asking libjpeg for a 600 px square would keep it at full size (900 < 600 fails the height).
    with Image.open(io.BytesIO(_encode(Image.new("RGB", (1800, 1200), (1, 2, 3)), "JPEG"))) as img:
        img.draft("RGB", _draft_box(img.size))
        assert img.size == (900, 600)
    decoded = decode_image(_encode(Image.new("RGB", (1800, 1200), (1, 2, 3)), "JPEG"), LIMITS)
    assert decoded.working.size == (600, 400)


def _imagehash_reference(image: Image.Image) -> PerceptualHashes:
    grey = trim_border(image.convert("L")).resize((HASH_GRID, HASH_GRID), Image.Resampling.LANCZOS)

    def triple(img: Image.Image) -> tuple[str, str, str]:
        detail = f"{imagehash.phash(img, hash_size=16)}{imagehash.dhash(img, hash_size=16)}"
        return str(imagehash.phash(img)), str(imagehash.dhash(img)), detail

    return PerceptualHashes(*triple(grey), tuple(triple(grey.transpose(t)) for t in DIHEDRAL))


def test_hashes_are_imagehash_bit_for_bit_in_every_orientation(photos: dict[str, bytes]) -> None:
    images = [decode_image(data, LIMITS).working for data in photos.values()]
    images += [Image.new("RGB", (300, 200), (255, 255, 255)), Image.new("RGB", (7, 3), (200, 4, 5))]
    noise = np.random.default_rng(3).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    images.append(Image.fromarray(noise, "RGB"))
    for image in images:
        assert perceptual_hashes(image) == _imagehash_reference(image)


def test_thumbnails_are_webp_at_each_size(photos: dict[str, bytes]) -> None:
    working = decode_image(photos["astronaut"], LIMITS).working  # 512 x 512: the largest is its own size
    made = thumbnails(working)
    assert sorted(made) == [150, 300, 600]
    for size, data in made.items():
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.format == "WEBP"
            assert max(thumb.size) == min(size, max(working.size))


def test_hashes_are_64_bit_hex_and_stable_under_recompression(photos: dict[str, bytes]) -> None:
    original = decode_image(photos["rocket"], LIMITS)
    with Image.open(io.BytesIO(photos["rocket"])) as src:
        recompressed = decode_image(_encode(src.convert("RGB"), "JPEG", quality=60), LIMITS)
    a, b = perceptual_hashes(original.working), perceptual_hashes(recompressed.working)
    assert len(a.phash) == len(a.dhash) == 16
    int(a.phash, 16)
    distance = bin(int(a.phash, 16) ^ int(b.phash, 16)).count("1")
    assert distance <= 6


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "IMAGE_EMPTY"),
        (b"this is not an image at all", "IMAGE_UNDECODABLE"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "IMAGE_UNDECODABLE"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "IMAGE_UNDECODABLE"),
    ],
)
def test_rejects_non_images(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected) as exc:
        decode_image(data, LIMITS)
    assert _reason(exc) == reason
    assert exc.value.field == "content"


def test_rejects_unsupported_format() -> None:
    data = _encode(Image.new("RGB", (16, 16)), "ICO")
    with pytest.raises(ImageRejected) as exc:
        inspect_image(data, LIMITS)
    assert _reason(exc) == "IMAGE_FORMAT_UNSUPPORTED"


def test_rejects_truncated_jpeg_on_decode_but_not_on_header(photos: dict[str, bytes]) -> None:
    with Image.open(io.BytesIO(photos["chelsea"])) as src:
        data = _encode(src.convert("RGB"), "JPEG")
    truncated = data[: len(data) // 2]
    assert inspect_image(truncated, LIMITS).format == "JPEG"
    with pytest.raises(ImageRejected) as exc:
        decode_image(truncated, LIMITS)
    assert _reason(exc) == "IMAGE_UNDECODABLE"


def test_rejects_too_many_pixels_before_decoding() -> None:
    # A blank 6000 x 6000 PNG compresses to a few kilobytes: a (small) decompression bomb.
    bomb = _encode(Image.new("L", (6000, 6000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(ImageRejected) as exc:
        inspect_image(bomb, ImageLimits(max_bytes=10 * 1024 * 1024, max_pixels=20_000_000))
    assert _reason(exc) == "IMAGE_TOO_MANY_PIXELS"


def test_rejects_oversized_bytes() -> None:
    with pytest.raises(ImageRejected) as exc:
        inspect_image(b"\xff" * 2048, ImageLimits(max_bytes=1024, max_pixels=10))
    assert _reason(exc) == "IMAGE_TOO_LARGE"
    assert exc.value.metadata["max_bytes"] == "1024"


def test_stored_features_verify_like_fresh_ones(photos: dict[str, bytes]) -> None:
    """Features stored at ingest (no pixels) align a crop exactly as freshly computed ones do; the pixels are
    loaded only when the pair fits, and pixels of another frame are refused."""
    from deeplens_server.keypoints import Keypoints, align, grey_frame, keypoints

    with Image.open(io.BytesIO(photos["coffee"])) as img:
        original = img.convert("RGB")
    w, h = original.size
    crop = original.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    fresh = keypoints(original)
    loads: list[int] = []

    def pixels() -> np.ndarray:
        loads.append(1)
        return grey_frame(original)

    stored = Keypoints.from_bytes(fresh.to_bytes(), pixels)
    assert stored.shape == fresh.shape
    assert np.array_equal(stored.points, fresh.points)
    assert stored.descriptors is not None
    assert fresh.descriptors is not None
    assert np.array_equal(stored.descriptors, fresh.descriptors)
    assert not loads  # nothing read yet
    query = keypoints(crop)
    assert align(query, stored, min_inliers=15) == align(query, fresh, min_inliers=15)
    assert align(query, stored, min_inliers=15).agreement > 0.9
    assert loads == [1]  # read once, then kept
    unrelated = Keypoints.from_bytes(fresh.to_bytes(), lambda: np.zeros((7, 7), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        _ = unrelated.grey


def test_ratio_test_matches_are_brute_force_knn_matches(photos: dict[str, bytes]) -> None:
    """The matches verification fits a transform to are exactly OpenCV's brute-force Hamming knnMatch(k=2)
    after Lowe's ratio test, for related and unrelated pairs, either way round."""
    import cv2
    from deeplens_server.keypoints import RATIO, Keypoints, _matches, keypoints

    frames = []
    for name in ("coffee", "chelsea", "astronaut"):
        with Image.open(io.BytesIO(photos[name])) as img:
            frames.append(img.convert("RGB"))
    w, h = frames[0].size
    frames += [frames[0].crop((w // 10, h // 10, w, h)), frames[0].rotate(5)]
    features = [keypoints(f) for f in frames]
    compared = 0
    for a in features:
        for b in features:
            if a is b or a.descriptors is None or b.descriptors is None:
                continue
            pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
            good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
            src, dst = _matches(a, b)
            assert np.array_equal(src, a.points[[g.queryIdx for g in good]])
            assert np.array_equal(dst, b.points[[g.trainIdx for g in good]])
            compared += 1
    assert compared == 20
    # A candidate with a single descriptor has no second neighbour: knnMatch gives no pair, nor does _matches.
    first, second = features[0], features[1]
    assert first.descriptors is not None
    assert second.descriptors is not None
    one = Keypoints(first.points[:1], first.descriptors[:1], first.shape, first.pixels)
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(second.descriptors, first.descriptors[:1], k=2)
    assert len(pairs) == len(second.descriptors)
    assert all(len(p) == 1 for p in pairs)
    src, dst = _matches(second, one)
    assert src.shape == (0, 2)
    assert dst.shape == (0, 2)


def test_copies_align_either_way_round_and_another_photo_does_not(photos: dict[str, bytes]) -> None:
    from deeplens_server.keypoints import align, keypoints

    with Image.open(io.BytesIO(photos["coffee"])) as img:
        original = img.convert("RGB")
    with Image.open(io.BytesIO(photos["chelsea"])) as img:
        other = keypoints(img.convert("RGB"))
    w, h = original.size
    mine = keypoints(original)
    for copy in (original.crop((0, 0, w * 3 // 4, h * 3 // 4)), original.rotate(5), original.resize((w // 2, h // 2))):
        theirs = keypoints(copy)
        for a, b in ((mine, theirs), (theirs, mine)):
            found = align(a, b, min_inliers=15)
            assert found.inliers >= 15
            assert found.agreement >= 0.8
    for a, b in ((mine, other), (other, mine)):
        assert align(a, b, min_inliers=15).agreement < 0.5


def test_a_sliver_has_no_features_and_stores_fine() -> None:
    from deeplens_server.keypoints import Keypoints, keypoints

    for size in ((1, 4000), (4000, 1), (40, 900)):
        found = keypoints(Image.new("RGB", size, (120, 30, 40)))
        assert len(found.points) == 0
        assert found.descriptors is None
        again = Keypoints.from_bytes(found.to_bytes(), lambda: np.zeros((1, 1), np.uint8))
        assert (len(again.points), again.descriptors, again.shape) == (0, None, found.shape)


def test_features_stored_as_npz_before_still_read_and_garbage_is_refused(photos: dict[str, bytes]) -> None:
    from deeplens_server.keypoints import Keypoints, keypoints

    fresh = keypoints(decode_image(photos["coffee"], LIMITS).working)
    assert fresh.descriptors is not None
    legacy = io.BytesIO()
    np.savez(legacy, points=fresh.points, descriptors=fresh.descriptors, shape=np.array(fresh.shape, dtype=np.int32))
    for data in (legacy.getvalue(), fresh.to_bytes()):
        again = Keypoints.from_bytes(data, lambda: np.zeros((1, 1), np.uint8))
        assert again.shape == fresh.shape
        assert np.array_equal(again.points, fresh.points)
        assert again.descriptors is not None
        assert np.array_equal(again.descriptors, fresh.descriptors)
    for garbage in (b"", b"DLKP1", fresh.to_bytes()[:-1], b"something else entirely"):
        with pytest.raises(ValueError, match="stored keypoints"):
            Keypoints.from_bytes(garbage, lambda: np.zeros((1, 1), np.uint8))
