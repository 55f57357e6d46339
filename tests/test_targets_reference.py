"""make_targets against a straightforward reference: the same four maps, bit for bit.

The reference is the plain algorithm of dbtk/data/targets.py written edge by edge: the exact point-to-edge
distance over the polygon's box grown by D, the kernel where the inside is at least D − ½ from the edges, the
threshold mask where the inside or within D + ½, the threshold ``1 − d/D`` kept where largest, rescaled. The
implementation handles all edges of a polygon in one array and accumulates differently; nothing of that may
change a single value, and any speed-up of make_targets is held to the same."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from dbtk.data.targets import make_targets, shrink_distance


def reference_targets(
    polygons: list[np.ndarray], ignore: list[bool], height: int, width: int, ratio: float, low: float, high: float
) -> dict[str, np.ndarray]:
    shrink_map = np.zeros((height, width), np.float32)
    shrink_mask = np.ones((height, width), np.float32)
    thresh_mask = np.zeros((height, width), np.float32)
    border = np.zeros((height, width), np.float32)
    for points, is_ignored in zip(polygons, ignore, strict=True):
        points = np.asarray(points, np.float64)
        distance = 0.0 if is_ignored else shrink_distance(points, ratio)
        if distance <= 0:
            cv2.fillPoly(shrink_mask, [np.round(points).astype(np.int32)], 0.0)
            continue
        x0 = max(math.floor(points[:, 0].min() - distance), 0)
        y0 = max(math.floor(points[:, 1].min() - distance), 0)
        x1 = min(math.ceil(points[:, 0].max() + distance), width - 1)
        y1 = min(math.ceil(points[:, 1].max() + distance), height - 1)
        if x1 < x0 or y1 < y0:
            continue
        nearest = _distance_to_edges(points.astype(np.float32), x0, y0, x1, y1)
        inside = np.zeros(nearest.shape, np.uint8)
        cv2.fillPoly(inside, [np.round(points - (x0, y0)).astype(np.int32)], 1)
        inside = inside.astype(bool)
        window = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        kernel = inside & (nearest >= np.float32(distance - 0.5))
        if kernel.any():
            shrink_map[window][kernel] = 1.0
        else:  # the centre line of a line too thin for a kernel
            (cx, cy), (w, h), angle = cv2.minAreaRect(points.astype(np.float32))
            half = max(w, h) / 2 - min(w, h) / 2
            theta = np.deg2rad(angle if w >= h else angle + 90)
            dx, dy = half * np.cos(theta), half * np.sin(theta)
            start, end = (int(round(cx - dx)), int(round(cy - dy))), (int(round(cx + dx)), int(round(cy + dy)))
            cv2.line(shrink_map, start, end, 1.0, thickness=1)
        thresh_mask[window][inside | (nearest < np.float32(distance + 0.5))] = 1.0
        value = nearest * np.float32(-1.0 / distance) + np.float32(1.0)
        border[window] = np.maximum(border[window], value)
    thresh_map = border * np.float32(high - low) + np.float32(low)
    return {"shrink_map": shrink_map, "shrink_mask": shrink_mask, "thresh_map": thresh_map, "thresh_mask": thresh_mask}


def _distance_to_edges(a: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Edge by edge, pixel by pixel in arrays: the distance from each pixel centre to the nearest edge segment."""
    xs = np.arange(x0, x1 + 1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1 + 1, dtype=np.float32)[:, None]
    best = None
    for start, end in zip(a, np.roll(a, -1, axis=0), strict=True):
        ab = end - start
        length2 = max(np.float32(ab[0] * ab[0] + ab[1] * ab[1]), np.float32(1e-12))
        px, py = xs - start[0], ys - start[1]
        t = np.clip(px * (ab[0] / length2) + py * (ab[1] / length2), 0, 1)
        dx, dy = px - t * ab[0], py - t * ab[1]
        squared = dx * dx + dy * dy
        best = squared if best is None else np.minimum(best, squared)
    return np.sqrt(best)


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
    # What the dataset passes: inside the image, float32.
    polygons = [np.clip(p, 0, size).astype(np.float32) for p in polygons]
    return polygons, [bool(rng.random() < 0.1) for _ in polygons]


@pytest.mark.parametrize("seed", range(40))
def test_same_maps_as_the_reference(seed: int) -> None:
    size = 96 if seed % 4 == 0 else 256
    polygons, ignore = _page(seed, size)
    ratio = (0.4, 0.3, 0.7) if seed % 2 else (0.6, 0.2, 0.8)
    got = make_targets(polygons, ignore, size, size, *ratio)
    want = reference_targets(polygons, ignore, size, size, *ratio)
    for key, expected in want.items():
        assert got[key].dtype == np.float32 and got[key].shape == (size, size), key
        np.testing.assert_array_equal(got[key], expected, err_msg=key)


def test_thin_and_tiny_lines_and_no_polygons() -> None:
    lines = [np.array([[5, 10], [60, 10], [60, 11.2], [5, 11.2]], np.float32),  # no kernel: the centre line
             np.array([[70, 40], [71, 40], [71, 41], [70, 41]], np.float32),
             np.array([[0, 0], [40, 0], [40, 8], [0, 8]], np.float32)]
    for polygons in (lines, []):
        got = make_targets(polygons, [False] * len(polygons), 50, 90)
        want = reference_targets(polygons, [False] * len(polygons), 50, 90, 0.4, 0.3, 0.7)
        for key, expected in want.items():
            np.testing.assert_array_equal(got[key], expected, err_msg=key)
