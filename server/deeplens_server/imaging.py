"""Image bytes in, everything the index needs out — decoded once, the same way for ingest and search.

``inspect_image`` reads only the header (cheap; the server uses it to reject bad uploads before queueing).
``decode_image`` applies the limits, decodes once (JPEG through ``Image.draft``, which lets libjpeg scale
by 1/2..1/8 while decoding), applies the EXIF orientation, flattens alpha onto white, and keeps a small
RGB working copy from which hashes and the model input are derived. ``model_input`` is the single
preprocessing function for the embedding model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.fftpack  # type: ignore[import-untyped]
from numpy.typing import NDArray
from PIL import Image, ImageOps

from deeplens_server.errors import ImageRejected
from deeplens_server.lanczos import resize_orientations

MODEL_INPUT_SIZE = 224
# Long side of the working copy: the largest thumbnail; plenty for 224 px model input and 32 px hashes.
WORKING_SIZE = 600
THUMBNAIL_SIZES = (150, 300, 600)
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF"})


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int

    def tightened(self, max_bytes: int, max_pixels: int) -> ImageLimits:
        """These limits lowered to a tenant's own (0: none of its own); never raised."""
        return ImageLimits(
            min(max_bytes or self.max_bytes, self.max_bytes), min(max_pixels or self.max_pixels, self.max_pixels)
        )


@dataclass(frozen=True, slots=True)
class ImageHeader:
    format: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class DecodedImage:
    header: ImageHeader
    sha256: str
    size_bytes: int
    # RGB working copy, oriented, long side at most WORKING_SIZE (about, for JPEG drafts).
    working: Image.Image
    # Camera facts from EXIF (camera_make, camera_model, taken_time, latitude, longitude, orientation).
    exif: dict[str, Any] = field(default_factory=dict)


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reject(message: str, reason: str, **metadata: str) -> ImageRejected:
    return ImageRejected(message, field="content", reason=reason, metadata=metadata)


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    if not data:
        raise _reject("the image is empty", "IMAGE_EMPTY")
    if len(data) > limits.max_bytes:
        raise _reject(
            f"the image is {len(data)} bytes; the limit is {limits.max_bytes}",
            "IMAGE_TOO_LARGE",
            size_bytes=str(len(data)),
            max_bytes=str(limits.max_bytes),
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _reject("the image declares far too many pixels", "IMAGE_TOO_MANY_PIXELS") from exc
    except Exception as exc:
        raise _reject("the bytes are not a readable image", "IMAGE_UNDECODABLE") from exc
    if img.format not in ALLOWED_FORMATS:
        raise _reject(
            f"image format {img.format} is not supported",
            "IMAGE_FORMAT_UNSUPPORTED",
            format=str(img.format),
        )
    width, height = img.size
    if width <= 0 or height <= 0:
        raise _reject("the image has no pixels", "IMAGE_UNDECODABLE")
    if width * height > limits.max_pixels:
        raise _reject(
            f"the image has {width * height} pixels; the limit is {limits.max_pixels}",
            "IMAGE_TOO_MANY_PIXELS",
            pixels=str(width * height),
            max_pixels=str(limits.max_pixels),
        )
    return img


def inspect_image(data: bytes, limits: ImageLimits) -> ImageHeader:
    """Checks size, format and pixel count from the header alone; raises ``ImageRejected``."""
    img = _open(data, limits)
    return ImageHeader(format=str(img.format), width=img.size[0], height=img.size[1])


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    orientation = img.getexif().get(0x0112, 1)
    width, height = img.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _draft_box(size: tuple[int, int]) -> tuple[int, int]:
    """The smallest size a JPEG draft may decode to: the working copy's, aspect kept. libjpeg scales by 1/2,
    1/4 or 1/8 while both sides stay at least this (asking for a square would keep a 3:2 photo at full size)."""
    width, height = size
    scale = min(1.0, WORKING_SIZE / max(width, height))
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def decode_image(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Decodes once into an oriented RGB working copy; raises ``ImageRejected`` for anything unusable."""
    img = _open(data, limits)
    fmt = str(img.format)
    try:
        width, height = _oriented_size(img)
        exif = read_exif(img)
        if fmt in ("JPEG", "MPO"):
            img.draft("RGB", _draft_box(img.size))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        working = img.convert("RGB")
        if max(working.size) > WORKING_SIZE:
            working.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    except ImageRejected:
        raise
    except Exception as exc:
        raise _reject("the image data is corrupt or truncated", "IMAGE_UNDECODABLE") from exc
    return DecodedImage(
        header=ImageHeader(format=fmt, width=width, height=height),
        sha256=content_sha256(data),
        size_bytes=len(data),
        working=working,
        exif=exif,
    )


def model_input(image: Image.Image) -> NDArray[np.uint8]:
    """The embedding model's input: RGB uint8, MODEL_INPUT_SIZE square, HWC. Used for ingest and search."""
    resized = image.resize((MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class PerceptualHashes:
    phash: str
    dhash: str
    # 256-bit pHash and dHash (hash size 16), 128 hex digits: tells apart pictures whose 64-bit hashes agree
    # but whose details differ (a stereo pair, two shots of one chessboard).
    detail: str = ""
    # (pHash, dHash, detail) of the image flipped and rotated: the seven other elements of the dihedral group,
    # in DIHEDRAL order. Matching compares a query's variants with the other image's canonical hashes, so a
    # mirrored or rotated copy is as near as the original.
    variants: tuple[tuple[str, str, str], ...] = ()


DIHEDRAL = (
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)
HASH_GRID = 128  # the grey square every hash is computed from: the same for the image and its variants


BORDER_TOLERANCE = 16  # grey levels: what still counts as the border's colour


def trim_border(grey: Image.Image) -> Image.Image:
    """The image without a uniform frame (letterboxing, padding, a scanner's margin): rows and columns at the
    edges whose every pixel is within BORDER_TOLERANCE of the corners' colour. Kept whole when the frame would
    leave less than a quarter of it."""
    pixels = np.asarray(grey, dtype=np.int16)
    corners = [pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]]
    content = np.abs(pixels - int(np.median(corners))) > BORDER_TOLERANCE
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    if rows.size == 0:
        return grey
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    if (box[2] - box[0]) * (box[3] - box[1]) < pixels.size // 4:
        return grey
    return grey.crop(box)


def phash_bands(phash: str) -> list[str]:
    """The four 16-bit bands of a 64-bit pHash, each tagged with its position: two hashes within distance 3
    share at least one band, so an indexed band lookup finds close hashes without scanning."""
    return [f"{i}{phash[4 * i : 4 * i + 4]}" for i in range(4)] if len(phash) == 16 else []


def perceptual_hashes(image: Image.Image) -> PerceptualHashes:
    """64-bit pHash and dHash as 16 hex digits each, 256-bit detail hashes, of the image and of its flips and
    rotations — after trimming a uniform frame. Bit for bit imagehash's ``phash`` and ``dhash`` (the same
    LANCZOS resizes, done for all eight orientations at once by ``lanczos.resize_orientations``, and the same
    DCT)."""
    grey = trim_border(image.convert("L")).resize((HASH_GRID, HASH_GRID), Image.Resampling.LANCZOS)
    square = np.asarray(grey)
    phash, phash16 = _phashes(square, 8), _phashes(square, 16)
    dhash, dhash16 = _dhashes(square, 8), _dhashes(square, 16)
    triples = [(p, d, p16 + d16) for p, d, p16, d16 in zip(phash, dhash, phash16, dhash16, strict=True)]
    return PerceptualHashes(*triples[0], tuple(triples[1:]))


def _hex(bits: NDArray[np.bool_]) -> list[str]:
    """Each row of bits as imagehash writes it: big-endian hex, a digit per four bits."""
    return [bytes(row).hex() for row in np.packbits(bits.reshape(len(bits), -1), axis=1)]


def _phashes(square: NDArray[np.uint8], size: int) -> list[str]:
    side = size * 4  # imagehash's highfreq_factor
    pixels = resize_orientations(square, side, side)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)[:, :size, :size]
    median = np.median(dct.reshape(len(pixels), -1), axis=1)
    return _hex(dct > median[:, None, None])


def _dhashes(square: NDArray[np.uint8], size: int) -> list[str]:
    pixels = resize_orientations(square, size + 1, size)
    return _hex(pixels[:, :, 1:] > pixels[:, :, :-1])


COLOUR_LEVELS = 4  # per channel: a 4 x 4 x 4 = 64-bin RGB histogram


def colour_signature(image: Image.Image) -> NDArray[np.float32]:
    """Square roots of the normalised 64-bin RGB histogram: a unit vector whose dot product with another is the
    Bhattacharyya coefficient of the two histograms (1 = the same colours, 0 = none in common)."""
    small = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.uint16)
    levels = small * COLOUR_LEVELS // 256
    bins = (levels[..., 0] * COLOUR_LEVELS + levels[..., 1]) * COLOUR_LEVELS + levels[..., 2]
    hist = np.bincount(bins.ravel(), minlength=COLOUR_LEVELS**3).astype(np.float64)
    signature: NDArray[np.float32] = np.sqrt(hist / hist.sum()).astype(np.float32)
    return signature


def _text(value: object, limit: int = 64) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return "".join(ch for ch in text if ch.isprintable()).strip()[:limit]


def _degrees(value: object, ref: object) -> float | None:
    try:
        d, m, s = (float(x) for x in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    result = d + m / 60 + s / 3600
    return -result if _text(ref) in ("S", "W") else result


def read_exif(img: Image.Image) -> dict[str, Any]:
    """Camera make and model, capture time, GPS position and orientation; anything malformed is skipped."""
    facts: dict[str, Any] = {}
    try:
        exif = img.getexif()
        if not exif:
            return facts
        for tag, key in ((0x010F, "camera_make"), (0x0110, "camera_model")):
            if exif.get(tag):
                facts[key] = _text(exif[tag])
        orientation = exif.get(0x0112)
        if isinstance(orientation, int) and 1 <= orientation <= 8:
            facts["orientation"] = orientation
        taken = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
        if taken:
            with contextlib.suppress(ValueError):
                when = datetime.strptime(_text(taken, 19), "%Y:%m:%d %H:%M:%S")
                facts["taken_time"] = when.replace(tzinfo=UTC).isoformat()
        gps = exif.get_ifd(0x8825)
        if gps:
            lat, lon = _degrees(gps.get(2), gps.get(1)), _degrees(gps.get(4), gps.get(3))
            if lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180:
                facts["latitude"], facts["longitude"] = lat, lon
    except Exception:  # hostile or broken EXIF must not cost the image
        return facts
    return facts


def thumbnails(image: Image.Image) -> dict[int, bytes]:
    """WebP thumbnails whose long side is each of THUMBNAIL_SIZES (or the image's own, if smaller), each made
    from the next larger one."""
    made = {}
    previous = image
    for size in sorted(THUMBNAIL_SIZES, reverse=True):
        copy = previous.copy()
        # Halving (600 -> 300, 300 -> 150) averages 2 x 2 blocks (``reducing_gap=1``: Image.reduce), a third
        # of the filters' cost and within 48 dB PSNR of LANCZOS from the working copy on the benchmark photos;
        # a size that is no exact half is filtered (BICUBIC, then LANCZOS) from what reduce leaves.
        resample = Image.Resampling.LANCZOS if size < 300 else Image.Resampling.BICUBIC
        copy.thumbnail((size, size), resample, reducing_gap=1.0)
        out = io.BytesIO()
        # The largest at method 0 of 6 (6 against 10 ms at method 2, ~30 % more bytes), the others at 2.
        copy.save(out, format="WEBP", quality=80, method=0 if size == max(THUMBNAIL_SIZES) else 2)
        made[size] = out.getvalue()
        previous = copy
    return made
