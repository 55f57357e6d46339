"""repair_all is repair, vectorised: the same points, flags and reasons for every polygon of an image."""

from __future__ import annotations

import numpy as np
import pytest

from dbtk.data.augment import color_jitter
from dbtk.data.polygons import repair, repair_all


def polygons(seed: int, count: int = 600) -> tuple[list[np.ndarray], list[bool]]:
    """Realistic boxes (most of them) mixed with every kind of damage repair knows."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        centre = rng.uniform(-40, 140, 2)
        kind = rng.integers(8)
        if kind <= 3:  # an axis-aligned or rotated text box, in or across the image
            w, h, a = rng.uniform(5, 60), rng.uniform(3, 15), rng.uniform(-0.3, 0.3)
            box = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
            pts = centre + box @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T
        else:  # random polygons: self-intersecting, concave, any point count
            pts = centre + rng.normal(0, 15, (int(rng.integers(3, 9)), 2))
        if rng.random() < 0.2:
            pts = pts[::-1]  # anticlockwise
        if rng.random() < 0.05:
            pts[0, 1] = np.inf
        if rng.random() < 0.05:
            pts[1] = pts[0]
        if rng.random() < 0.03:
            pts = pts[:2]
        found.append(pts)
    return found, [bool(rng.random() < 0.2) for _ in found]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("width", "height", "min_size"), [(100, 80, 0.0), (100, 80, 6.0), (None, None, 0.0)])
def test_same_results_as_repair(seed: int, width: int | None, height: int | None, min_size: float) -> None:
    points, ignore = polygons(seed)
    fast = repair_all(points, width, height, ignore=ignore, min_size=min_size)
    for p, flag, got in zip(points, ignore, fast, strict=True):
        want = repair(p, width, height, ignore=flag, min_size=min_size)
        assert got.reasons == want.reasons and got.ignore == want.ignore
        assert (got.points is None) == (want.points is None)
        if want.points is not None:
            np.testing.assert_array_equal(got.points, want.points)


def test_color_jitter_is_uint8_and_keeps_gray_gray() -> None:
    rng = np.random.default_rng(0)
    image = np.full((32, 48, 3), 120, np.uint8)
    image[8:16] = 30
    out = color_jitter(image, rng, 0.3)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert color_jitter(image, rng, 0.0) is image
    assert abs(int(out[0, 0, 0]) - int(out[8, 0, 0])) > 30  # the text stays darker than the paper
