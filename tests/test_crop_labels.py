"""crop_labels is repair_all of every moved polygon, survivors kept: the same points and flags, in the same order,
though it moves all points at once, never repairs a polygon whose box misses the crop and clips those across the
crop's border together."""

from __future__ import annotations

import numpy as np
import pytest

from dbtk.data.augment import AugmentConfig, crop_labels, random_affine, transform_points
from dbtk.data.polygons import repair_all


def _page(rng: np.random.Generator, width: int, height: int) -> tuple[list[np.ndarray], list[bool]]:
    """A page's labels after the label path: text boxes and some curved lines, repaired against the page."""
    polygons = []
    for _ in range(int(rng.integers(0, 120))):
        w, h, angle = rng.uniform(4, 300), rng.uniform(3, 30), rng.uniform(-0.2, 0.2)
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = rng.uniform(0, (width, height)) + corners @ rotation.T
        if rng.random() < 0.1:  # a 16-point curved line
            xs = np.linspace(0, w, 8)
            bend = 0.002 * (xs - w / 2) ** 2
            top = np.stack([xs, bend], axis=1)
            points = rng.uniform(0, (width, height)) + np.concatenate([top, (top + (0, h))[::-1]])
        polygons.append(points)
    ignore = [bool(rng.random() < 0.1) for _ in polygons]
    fixed = repair_all(polygons, width, height, ignore=ignore)
    return [f.points for f in fixed if not f.dropped], [f.ignore for f in fixed if not f.dropped]


@pytest.mark.parametrize("seed", range(30))
def test_same_labels_as_repairing_every_moved_polygon(seed: int) -> None:
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(200, 1400)), int(rng.integers(200, 1400))
    polygons, ignore = _page(rng, width, height)
    size = int(rng.choice([128, 512]))
    config = AugmentConfig(size=size, crop=bool(seed % 3), random=True, scale_min=0.5, scale_max=2.0, rotate=10.0)
    matrix = random_affine(rng, width, height, polygons, ignore, config)
    min_size = float(rng.choice([0.0, 4.0]))

    got_points, got_ignore = crop_labels(polygons, ignore, matrix, size, min_size)
    moved = [transform_points(points, matrix) for points in polygons]
    want = [f for f in repair_all(moved, size, size, ignore=ignore, min_size=min_size) if not f.dropped]
    assert got_ignore == [f.ignore for f in want]
    assert len(got_points) == len(want)
    for got, expected in zip(got_points, want, strict=True):
        assert got.dtype == expected.points.dtype
        np.testing.assert_array_equal(got, expected.points)


def test_no_polygons() -> None:
    assert crop_labels([], [], np.eye(2, 3), 64, 4.0) == ([], [])
