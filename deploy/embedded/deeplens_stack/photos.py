"""Real photos available offline (the sample photos shipped inside scikit-image) and edited copies of them."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

from PIL import Image

# The bundled photographs; synthetic test patterns (chessboards, phantom, colour wheel, logo) are left out.
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip


def _data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed (it ships the sample photos)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sample_photos() -> dict[str, bytes]:
    """Photo id (file stem with '_' as '-') to the file's bytes, as shipped."""
    root = _data_dir()
    return {Path(name).stem.replace("_", "-"): (root / name).read_bytes() for name in PHOTOS}


def edited_copy(data: bytes, *, crop: float = 0.08, scale: float = 0.6, quality: int = 70) -> bytes:
    """A plausible re-upload: cropped by ``crop`` on each side, resized by ``scale``, JPEG-recompressed."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    dx, dy = int(w * crop), int(h * crop)
    cropped = rgb.crop((dx, dy, w - dx, h - dy))
    resized = cropped.resize((max(1, int(cropped.width * scale)), max(1, int(cropped.height * scale))))
    out = io.BytesIO()
    resized.save(out, format="JPEG", quality=quality)
    return out.getvalue()
