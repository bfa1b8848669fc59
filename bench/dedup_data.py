"""The duplicate-detection benchmark's data, built offline from real photos shipped in packages.

Originals: scikit-image's sample photos and the sample images of Debian's ``opencv-doc`` (downloaded with
``apt-get download``, unpacked locally), and ten random-noise images. Each original gets 16 transformed copies
(the positives). The hard negatives are distinct images that look alike: the noise images (alike to a CNN),
stereo pairs (motorcycle, aloe, the chessboard left/right shots), the 26 chessboard calibration shots, and
before/after pairs (aero, graf, leuven, basketball, rubberwhale, Suzanne).
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

OPENCV_PHOTOS = (
    "apple",
    "baboon",
    "building",
    "butterfly",
    "fruits",
    "home",
    "HappyFish",
    "messi5",
    "orange",
    "squirrel_cls",
    "starry_night",
    "stuff",
    "board",
    "aero1",
    "aero3",
    "graf1",
    "graf3",
    "leuvenA",
    "leuvenB",
    "basketball1",
    "basketball2",
    "rubberwhale1",
    "rubberwhale2",
    "aloeL",
    "aloeR",
    "Blender_Suzanne1",
    "Blender_Suzanne2",
    "smarties",
    "box_in_scene",
    "chicky_512",
    "lena",
)
# Shipped twice: Blender_Suzanne2 is Blender_Suzanne1 rotated (the same render, for feature-matching demos).
SAME_PICTURE = {"opencv-Blender_Suzanne2": "opencv-Blender_Suzanne1"}
# Consecutive video frames (optical-flow samples) whose pixels differ by a few percent: the same picture to
# every method here, and arguably to a person. Pairs across these are scored neither way, only reported.
AMBIGUOUS = (("opencv-basketball1", "opencv-basketball2"), ("opencv-rubberwhale1", "opencv-rubberwhale2"))
CHESSBOARDS = [f"{side}{n:02d}" for side in ("left", "right") for n in range(1, 15) if n != 10]


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _hue(img: Image.Image, shift: int) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    return Image.merge("HSV", (h.point(lambda x: (x + shift) % 256), s, v)).convert("RGB")


def _overlay(img: Image.Image) -> Image.Image:
    out = img.copy()
    w, h = out.size
    draw = ImageDraw.Draw(out, "RGBA")
    draw.rectangle((int(w * 0.62), int(h * 0.82), int(w * 0.98), int(h * 0.96)), fill=(255, 255, 255, 160))
    draw.text((int(w * 0.64), int(h * 0.85)), "(c) DeepLens 2026", fill=(20, 20, 20, 255))
    draw.ellipse((int(w * 0.03), int(h * 0.03), int(w * 0.15), int(h * 0.03) + int(w * 0.12)), fill=(255, 0, 0, 120))
    return out


def _rotate_small(img: Image.Image) -> Image.Image:
    w, h = img.size
    turned = img.rotate(5, resample=Image.Resampling.BICUBIC)
    return turned.crop((int(w * 0.06), int(h * 0.06), int(w * 0.94), int(h * 0.94)))


TRANSFORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "resize50": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2)), 85),
    "jpeg-q25": lambda im: _jpeg(im, 25),
    "crop10": lambda im: _jpeg(im.crop((im.width // 10, im.height // 10, im.width * 9 // 10, im.height * 9 // 10))),
    "crop-corner25": lambda im: _jpeg(im.crop((0, 0, im.width * 3 // 4, im.height * 3 // 4))),
    "flip": lambda im: _jpeg(ImageOps.mirror(im)),
    "rotate90": lambda im: _jpeg(im.rotate(90, expand=True)),
    "rotate5": lambda im: _jpeg(_rotate_small(im)),
    "brighter": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.4)),
    "low-contrast": lambda im: _jpeg(ImageEnhance.Contrast(im).enhance(0.6)),
    "grayscale": lambda im: _jpeg(ImageOps.grayscale(im)),
    "hue-shift": lambda im: _jpeg(_hue(im, 24)),
    "overlay": lambda im: _jpeg(_overlay(im)),
    "blur": lambda im: _jpeg(im.filter(ImageFilter.GaussianBlur(2))),
    "border": lambda im: _jpeg(ImageOps.expand(im, border=max(4, im.width // 20), fill=(255, 255, 255))),
    "stretch": lambda im: _jpeg(im.resize((im.width, im.height * 4 // 5))),
    "thumbnail-png": lambda im: _png(ImageOps.contain(im, (320, 320))),
}


def _opencv_dir(cache: Path) -> Path:
    data = cache / "opencv-doc" / "usr/share/doc/opencv-doc/examples/data"
    if not data.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True, capture_output=True)
            deb = next(Path(tmp).glob("opencv-doc_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "opencv-doc")], check=True)
    return data


def _noise(seed: int) -> bytes:
    """Random pixels: every such image looks alike to a CNN (cosine ~0.95) but none is another's copy."""
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(200, 640)), int(rng.integers(200, 480)))
    return _png(Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)))


def originals(cache: Path) -> dict[str, bytes]:
    from deeplens_stack.photos import sample_photos

    found = {f"skimage-{k}": v for k, v in sample_photos().items()}
    found |= {f"noise-{n:02d}": _noise(n) for n in range(10)}
    data = _opencv_dir(cache)
    for name in [*OPENCV_PHOTOS, *CHESSBOARDS]:
        for suffix in (".jpg", ".png"):
            path = data / f"{name}{suffix}"
            if path.exists():
                found[f"opencv-{name}"] = path.read_bytes()
                break
    return found


def build(cache: Path) -> tuple[Path, dict[str, str]]:
    """Writes every original and copy as a file under ``cache/dataset``; returns the folder and, for each file
    name, the original it comes from."""
    out = cache / "dataset"
    out.mkdir(parents=True, exist_ok=True)
    truth: dict[str, str] = {}
    for name, data in sorted(originals(cache).items()):
        with Image.open(io.BytesIO(data)) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
        path = out / f"{name}.png"
        if not path.exists():
            path.write_bytes(_png(rgb))
        origin = SAME_PICTURE.get(name, name)
        truth[path.name] = origin
        for tname, transform in TRANSFORMS.items():
            suffix = ".png" if tname.endswith("png") else ".jpg"
            copy = out / f"{name}--{tname}{suffix}"
            if not copy.exists():
                copy.write_bytes(transform(rgb))
            truth[copy.name] = origin
    return out, truth
