"""make_targets against a straightforward reference: the same four maps.

The reference is the definition, pixel by pixel in float64: a pixel centre is inside by the even-odd rule, d is
its exact distance to the nearest edge segment, the kernel is inside and d ≥ D − ½, the threshold mask inside or
d < D + ½, the threshold value ``1 − d/D`` kept where largest, rescaled. make_targets computes the same in float32
by other means (edge-line distances and corner wedges for convex polygons, see dbtk/data/targets.py), so a mask
may differ only at a pixel whose d lies within :data:`EPS` of a decision (or of the outline), and a value by
float32 rounding."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from dbtk.data import targets as targets_module
from dbtk.data.targets import make_targets, shrink_distance

#: How close (in pixels) d may come to a decision before the reference calls the pixel too close to call.
EPS = 1e-3
#: Largest difference of a threshold value: float32 distances in units of D, rescaled.
VALUE_TOLERANCE = 1e-4


def reference_targets(
    polygons: list[np.ndarray], ignore: list[bool], height: int, width: int, ratio: float, low: float, high: float
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The four maps, and the pixels where a mask is too close to call."""
    shrink_map = np.zeros((height, width), np.uint8)
    shrink_mask = np.ones((height, width), np.uint8)
    thresh_mask = np.zeros((height, width), np.uint8)
    border = np.zeros((height, width), np.float64)
    unsure = np.zeros((height, width), bool)
    for points, is_ignored in zip(polygons, ignore, strict=True):
        points = np.asarray(points, np.float64)
        distance = 0.0 if is_ignored else shrink_distance(points, ratio)
        if distance <= 0:
            cv2.fillPoly(shrink_mask, [np.round(points).astype(np.int32)], 0)
            continue
        x0 = max(math.floor(points[:, 0].min() - distance), 0)
        y0 = max(math.floor(points[:, 1].min() - distance), 0)
        x1 = min(math.ceil(points[:, 0].max() + distance), width - 1)
        y1 = min(math.ceil(points[:, 1].max() + distance), height - 1)
        if x1 < x0 or y1 < y0:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1, dtype=np.float64), np.arange(y0, y1 + 1, dtype=np.float64))
        nearest, inside = _distance_and_inside(points, xs, ys)
        window = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        close = (np.abs(nearest - (distance - 0.5)) < EPS) | (np.abs(nearest - (distance + 0.5)) < EPS) | (nearest < EPS)
        unsure[window] |= close
        kernel = (inside & (nearest >= distance - 0.5)) if distance > 0.5 else inside
        if kernel.any() and not (kernel & ~close).any():  # whether there is a kernel at all is too close to call
            unsure[window] |= kernel
            unsure |= _centre_line(shrink_map.shape, points) > 0
        if kernel.any():
            shrink_map[window][kernel] = 1
        else:  # the centre line of a line too thin for a kernel
            shrink_map = np.maximum(shrink_map, _centre_line(shrink_map.shape, points))
        thresh_mask[window][inside | (nearest < distance + 0.5)] = 1
        border[window] = np.maximum(border[window], 1.0 - nearest / distance)
    thresh_map = (border * (high - low) + low).astype(np.float32)
    maps = {"shrink_map": shrink_map, "shrink_mask": shrink_mask, "thresh_map": thresh_map, "thresh_mask": thresh_mask}
    return maps, unsure


def _distance_and_inside(points: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge by edge: the distance from each pixel centre to the nearest edge segment, and the even-odd rule."""
    best = np.full(xs.shape, np.inf)
    inside = np.zeros(xs.shape, bool)
    for start, end in zip(points, np.roll(points, -1, axis=0), strict=True):
        ab = end - start
        t = np.clip(((xs - start[0]) * ab[0] + (ys - start[1]) * ab[1]) / max(ab @ ab, 1e-300), 0, 1)
        best = np.minimum(best, np.hypot(xs - start[0] - t * ab[0], ys - start[1] - t * ab[1]))
        if start[1] != end[1]:
            straddles = (start[1] > ys) != (end[1] > ys)
            inside ^= straddles & (xs < start[0] + (ys - start[1]) * ab[0] / ab[1])
    return best, inside


def _centre_line(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    (cx, cy), (w, h), angle = cv2.minAreaRect(points.astype(np.float32))
    half = max(w, h) / 2 - min(w, h) / 2
    theta = np.deg2rad(angle if w >= h else angle + 90)
    dx, dy = half * np.cos(theta), half * np.sin(theta)
    start, end = (int(round(cx - dx)), int(round(cy - dy))), (int(round(cx + dx)), int(round(cy + dy)))
    cv2.line(canvas, start, end, 1, thickness=1)
    return canvas


def assert_same_maps(got: dict[str, np.ndarray], want: dict[str, np.ndarray], unsure: np.ndarray) -> None:
    for key, expected in want.items():  # the masks uint8 0/1, the threshold map float32
        assert got[key].dtype == (np.float32 if key == "thresh_map" else np.uint8) and got[key].shape == expected.shape, key
    for key in ("shrink_map", "thresh_mask"):
        wrong = (got[key] != want[key]) & ~unsure
        assert not wrong.any(), f"{key}: {int(wrong.sum())} pixels differ, e.g. (y, x) = {np.argwhere(wrong)[:3].tolist()}"
    np.testing.assert_array_equal(got["shrink_mask"], want["shrink_mask"])
    np.testing.assert_allclose(got["thresh_map"], want["thresh_map"], atol=VALUE_TOLERANCE, rtol=0)


def _box(rng: np.random.Generator, size: int) -> np.ndarray:
    """A rotated text box anywhere in (and a little across) the image, 1.5 to 40 px high."""
    w, h, angle = rng.uniform(3, size * 0.8), rng.uniform(1.5, 40), rng.uniform(-0.3, 0.3)
    centre = rng.uniform(-10, size + 10, 2)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return centre + corners @ rotation.T


def _curve(rng: np.random.Generator, size: int) -> np.ndarray:
    """A 16-point polygon along an arc, as curved-text labels have."""
    cx, cy, radius = rng.uniform(20, size - 20), rng.uniform(20, size - 20), rng.uniform(30, 120)
    angles = np.linspace(-0.6, 0.6, 8) + rng.uniform(-1, 1)
    thick = rng.uniform(4, 20)
    outer = np.stack([cx + (radius + thick) * np.sin(angles), cy - (radius + thick) * np.cos(angles)], axis=1)
    inner = np.stack([cx + radius * np.sin(angles), cy - radius * np.cos(angles)], axis=1)[::-1]
    return np.concatenate([outer, inner])


def _page(seed: int, size: int) -> tuple[list[np.ndarray], list[bool]]:
    rng = np.random.default_rng(seed)
    polygons = []
    for _ in range(int(rng.integers(1, 60))):
        kind = rng.random()
        polygons.append(_curve(rng, size) if kind < 0.15 else _box(rng, size))
        if kind > 0.9:  # a pentagon or a triangle: other point counts
            polygons[-1] = rng.uniform(0, size, (int(rng.integers(3, 6)), 2))
        elif kind > 0.85:  # a convex polygon of many points
            count, radius, centre = int(rng.integers(9, 17)), rng.uniform(4, 40), rng.uniform(0, size, 2)
            angles = np.sort(rng.uniform(0, 2 * np.pi, count))
            polygons[-1] = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    # What the dataset passes: inside the image, float32.
    polygons = [np.clip(p, 0, size).astype(np.float32) for p in polygons]
    return polygons, [bool(rng.random() < 0.1) for _ in polygons]


@pytest.mark.parametrize("seed", range(40))
def test_same_maps_as_the_reference(seed: int) -> None:
    size = 96 if seed % 4 == 0 else 256
    polygons, ignore = _page(seed, size)
    ratio = (0.4, 0.3, 0.7) if seed % 2 else (0.6, 0.2, 0.8)
    got = make_targets(polygons, ignore, size, size, *ratio)
    assert_same_maps(got, *reference_targets(polygons, ignore, size, size, *ratio))


def test_thin_and_tiny_lines_and_no_polygons() -> None:
    lines = [np.array([[5, 10], [60, 10], [60, 11.2], [5, 11.2]], np.float32),  # no kernel: the centre line
             np.array([[70, 40], [71, 40], [71, 41], [70, 41]], np.float32),
             np.array([[0, 0], [40, 0], [40, 8], [0, 8]], np.float32)]
    for polygons in (lines, []):
        got = make_targets(polygons, [False] * len(polygons), 50, 90)
        assert_same_maps(got, *reference_targets(polygons, [False] * len(polygons), 50, 90, 0.4, 0.3, 0.7))


def test_line_boxes_take_the_convex_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotated line boxes — nearly every label — never need the general field (the fast path is not lost)."""

    def general(*args: object) -> None:
        raise AssertionError("a line box took the general field")

    monkeypatch.setattr(targets_module, "_general_field", general)
    rng = np.random.default_rng(7)
    boxes = [box.astype(np.float32) for box in (_box(rng, 256) for _ in range(200)) if (box >= 0).all() and (box <= 256).all()]
    assert len(boxes) > 20
    make_targets(boxes, [False] * len(boxes), 256, 256)
    with pytest.raises(AssertionError, match="general field"):
        make_targets([_curve(rng, 256).astype(np.float32)], [False], 256, 256)


def test_threshold_range_must_rise() -> None:
    box = [np.array([[2, 2], [20, 2], [20, 9], [2, 9]], np.float32)]
    with pytest.raises(ValueError, match="thresh_max"):
        make_targets(box, [False], 16, 24, 0.4, 0.7, 0.7)
