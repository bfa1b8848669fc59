"""Pillow's LANCZOS resize of 8-bit grey images, bit for bit, for a stack of same-size images at once.

The perceptual hashes resize each image's 128 px grey square in all eight orientations to four small sizes:
32 resizes per image, which cost Pillow ~2.5 ms. Pillow's resize is separable and works in fixed point: a
horizontal pass, rounded to 8 bits, then a vertical one, each output pixel a sum of input pixels times
integer weights (the LANCZOS window normalised to ``2**PRECISION_BITS``). The same sums as matrix products,
for the square and its transpose only (``resize_orientations``), cost ~0.4 ms on one thread. Every weight
and pixel is a small integer, every product and sum stays far below 2**53, so float64 arithmetic is exact
and the result is Pillow's to the last bit, as long as the weights are computed as Pillow computes them
(``precompute_coeffs`` and ``normalize_coeffs_8bpc`` in ``libImaging/Resample.c``), which ``_weights`` does,
with the same libm ``sin``, and the passes run in Pillow's order.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numpy.typing import NDArray

PRECISION_BITS = 32 - 8 - 2
_SUPPORT = 3.0
_ONE = float(1 << PRECISION_BITS)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -_SUPPORT <= x < _SUPPORT else 0.0


@cache
def _weights(in_size: int, out_size: int) -> NDArray[np.float64]:
    """The (out_size, in_size) matrix of Pillow's fixed-point weights for resizing a line of ``in_size``
    pixels to ``out_size``."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        weights = [_lanczos((x - center + 0.5) * (1.0 / filterscale)) for x in range(xmin, xmax)]
        total = 0.0
        for w in weights:
            total += w
        for i, w in enumerate(weights):
            k = w / total if total != 0.0 else w
            matrix[xx, xmin + i] = int(k * _ONE - 0.5) if k < 0 else int(k * _ONE + 0.5)
    matrix.flags.writeable = False
    return matrix


def _rounded(sums: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pillow's ``clip8``: (sum + half) >> PRECISION_BITS, clamped to 0..255 (exact: scaling by a power of
    two and adding a half lose nothing at these magnitudes)."""
    sums *= 1.0 / _ONE
    sums += 0.5
    np.floor(sums, out=sums)
    return np.clip(sums, 0, 255, out=sums)


def resize_stack(images: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    """``images`` (n, h, w) resized to (n, height, width) exactly as ``Image.resize((width, height),
    Image.Resampling.LANCZOS)`` resizes each one."""
    _, in_height, in_width = images.shape
    pixels = images.astype(np.float64)
    # Pillow's order: the vertical pass first when the height shrinks by more than twice what the width
    # does (``ImagingResampleInner``); the order changes the result, as each pass rounds to 8 bits.
    passes = [(in_width, width, True), (in_height, height, False)]
    if in_height - height > 0 and in_height - height > (in_width - width) * 2:
        passes.reverse()
    for in_size, out_size, horizontal in passes:
        if in_size == out_size:
            continue
        weights = _weights(in_size, out_size)
        if horizontal:  # one product for the whole stack: (n * rows, w) by (w, width)
            n, rows, _ = pixels.shape
            pixels = _rounded(pixels.reshape(-1, in_size) @ weights.T).reshape(n, rows, out_size)
        else:
            pixels = _rounded(weights @ pixels)
    return np.ascontiguousarray(pixels, dtype=np.uint8)


# The eight orientations of a square as (transposed, rows reversed, columns reversed) of it, in the order of
# imaging.DIHEDRAL after the identity: Pillow's FLIP_LEFT_RIGHT, FLIP_TOP_BOTTOM, ROTATE_90, ROTATE_180,
# ROTATE_270, TRANSPOSE, TRANSVERSE.
ORIENTATIONS = (
    (False, False, False),
    (False, False, True),
    (False, True, False),
    (True, True, False),
    (False, True, True),
    (True, False, True),
    (True, False, False),
    (True, True, True),
)


def _oriented(image: NDArray[np.uint8], transposed: bool, rows: bool, columns: bool) -> NDArray[np.uint8]:
    out = image.T if transposed else image
    out = out[::-1] if rows else out
    return out[:, ::-1] if columns else out


@cache
def _mirror_symmetric(in_size: int, out_size: int) -> bool:
    weights = _weights(in_size, out_size)
    return bool(np.array_equal(weights, weights[::-1, ::-1]))


def resize_orientations(square: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    """The square (s, s) in each of ``ORIENTATIONS``, each resized to (height, width) as ``resize_stack``
    would: (8, height, width). Reversing rows or columns commutes with a pass whose weights read the same
    backwards (the LANCZOS weights here do), so only the square and its transpose are resized and the other
    six are their mirror images: a quarter of the arithmetic, the same bits."""
    side = square.shape[0]
    if not (_mirror_symmetric(side, width) and _mirror_symmetric(side, height)):
        return resize_stack(np.stack([_oriented(square, *o) for o in ORIENTATIONS]), width, height)
    plain, transposed = resize_stack(np.stack([square, square.T]), width, height)
    return np.stack([_oriented(transposed if t else plain, False, r, c) for t, r, c in ORIENTATIONS])
