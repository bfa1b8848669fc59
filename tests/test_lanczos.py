"""The hashes' batched LANCZOS resize is Pillow's, bit for bit: in either pass order, up or down, and for the
eight orientations derived from two resizes."""

from __future__ import annotations

import numpy as np
import pytest
from deeplens_server import lanczos
from deeplens_server.imaging import DIHEDRAL
from deeplens_server.lanczos import resize_orientations, resize_stack
from PIL import Image


def _pillow(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def _samples(rng: np.random.Generator, height: int, width: int) -> list[np.ndarray]:
    noise = rng.integers(0, 256, (height, width), dtype=np.uint8)
    edges = (rng.integers(0, 2, (height, width)) * 255).astype(np.uint8)  # drives the lobes past 0 and 255
    walk = np.clip(np.cumsum(rng.integers(-20, 21, (height, width)), axis=1) + 128, 0, 255).astype(np.uint8)
    return [noise, edges, walk]


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((128, 128), (32, 32)),
        ((128, 128), (9, 8)),
        ((128, 63), (32, 32)),  # the height shrinks twice as much as the width: Pillow goes vertical first
        ((247, 139), (17, 16)),
        ((40, 300), (64, 64)),  # upscaled vertically
        ((30, 20), (5, 70)),
        ((50, 60), (50, 16)),  # one side kept: that pass is skipped
    ],
)
def test_resize_stack_is_pillow_bit_for_bit(shape: tuple[int, int], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape) + sum(size))
    images = _samples(rng, *shape)
    got = resize_stack(np.stack(images), *size)
    for image, resized in zip(images, got, strict=True):
        assert np.array_equal(resized, _pillow(image, *size))


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (9, 8), (17, 16), (13, 13)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_resize_orientations_is_pillow_on_each_transposed_square(
    size: tuple[int, int], symmetric: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not symmetric:  # the path for weights that do not read the same backwards: all eight resized
        monkeypatch.setattr(lanczos, "_mirror_symmetric", lambda *_: False)
    for square in _samples(np.random.default_rng(size[0]), 128, 128):
        image = Image.fromarray(square)
        expected = [image, *(image.transpose(t) for t in DIHEDRAL)]
        got = resize_orientations(square, *size)
        assert got.shape == (8, size[1], size[0])
        for oriented, resized in zip(expected, got, strict=True):
            assert np.array_equal(resized, _pillow(np.asarray(oriented), *size))
