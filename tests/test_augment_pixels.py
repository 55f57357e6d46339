"""The pixel side of augmentation: the warp's 4-channel detour changes no value, the colour jitter is the colour
matrix it says it is."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dbtk.data.augment import color_jitter, warp


@pytest.mark.parametrize(("scale", "degrees"), [(1.0, 0.0), (1.3, 4.0), (0.8, -5.0), (0.6, 3.0), (0.5, 0.0)])
def test_warp_gives_the_three_channel_warp_bit_for_bit(scale: float, degrees: float) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    matrix = cv2.getRotationMatrix2D((205.0, 150.0), degrees, scale)
    matrix[:, 2] -= (40.0, 25.0)
    got = warp(image, matrix, 256)
    if scale < 0.75 and degrees == 0.0:
        resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        placed = np.array([[1.0, 0, matrix[0, 2] - (scale - 1) / 2], [0, 1.0, matrix[1, 2] - (scale - 1) / 2]])
        want = cv2.warpAffine(resized, placed, (256, 256), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    else:
        flags = cv2.INTER_AREA if scale < 0.75 else cv2.INTER_LINEAR
        want = cv2.warpAffine(image, matrix, (256, 256), flags=flags, borderValue=(0, 0, 0))
    assert got.shape == want.shape == (256, 256, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    gray = np.ascontiguousarray(image[..., 0])
    np.testing.assert_array_equal(warp(gray, matrix, 256)[..., None], warp(np.dstack([gray] * 3), matrix, 256)[..., :1])


@pytest.mark.parametrize("seed", range(12))
def test_color_jitter_is_saturation_then_contrast_then_brightness(seed: int) -> None:
    image = np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    draws = np.random.default_rng(seed + 100)
    got = color_jitter(image, np.random.default_rng(seed + 100), 0.4)
    # The same random draws, applied one step at a time in floating point.
    x = image.astype(np.float64)
    gray = x.mean(axis=2, keepdims=True)
    saturation = 0.0 if draws.random() < 0.1 else draws.uniform(0.6, 1.4)
    x = saturation * x + (1 - saturation) * gray
    mean = x.mean()
    contrast, brightness = draws.uniform(0.6, 1.4), draws.uniform(0.6, 1.4)
    want = np.clip(((x - mean) * contrast + mean) * brightness, 0, 255)
    assert got.dtype == np.uint8 and got.shape == image.shape
    # One rounding of one colour matrix (OpenCV's uint8 transform rounds its own arithmetic a little): within a level.
    assert np.abs(got.astype(np.float64) - want).max() < 1.0


@pytest.mark.parametrize("seed", range(4))
def test_warp_reads_only_the_part_of_the_page_it_pads(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 4-channel buffer is padded only where the output reads: whatever the rest holds, the result is the same
    (and the 3-channel warp's), for windows inside, across and beyond the page."""
    from dbtk.data import augment

    rng = np.random.default_rng(seed)
    empty = np.empty
    for _ in range(40):
        height, width = int(rng.integers(20, 700)), int(rng.integers(20, 700))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        size = int(rng.choice([32, 128, 256]))
        centre = (rng.uniform(0, width), rng.uniform(0, height))
        matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-30, 30), rng.uniform(0.75, 2.5))
        matrix[:, 2] += rng.uniform(-400, 400, 2)
        results = []
        for fill in (0, 255):
            monkeypatch.setattr(augment.np, "empty", lambda shape, dtype=None, fill=fill: np.full(shape, fill, dtype=dtype))
            results.append(warp(image, matrix, size))
            monkeypatch.setattr(augment.np, "empty", empty)
        want = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        np.testing.assert_array_equal(results[0], want)
        np.testing.assert_array_equal(results[1], want)
