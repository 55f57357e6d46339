"""DB training targets: shrink (probability) map + mask, threshold map + mask.

Follows the DBNet paper: each text polygon is shrunk by ``D = A(1 − r²)/L`` (A area, L perimeter, r the shrink
ratio) for the probability map and dilated by D for the threshold map, whose value is
``1 − dist(pixel, polygon edges)/D`` clipped to [0, 1], rescaled to [thresh_min, thresh_max].

Speed and exactness: one exact point-to-edge distance field per polygon, over its box grown by D, gives all
three geometric sets at once — the shrunk kernel (inside and ≥ D from the edges: what a round-join offset by −D
produces), the dilated region (inside or < D away: the round-join offset by +D) and the threshold values — so
no polygon offsetting (pyclipper) and no per-pixel Python is needed. The field is built by broadcasting a row
of x and a column of y against per-edge constants, in cache-sized buffers.

Any number of points: a curved line's polygon (2 × N points along its edges, as Total-Text, CTW1500 and the
synthetic reader's ``curved`` lines have) gets a kernel and a border band that follow the curve, because both come
from distances to its edges (tests/test_curved.py).

Coordinates follow the OpenCV / DBNet convention: pixel (i, j) has its centre at (x=j, y=i).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Pixel-centre conventions matching cv2.fillPoly on the offset polygon (what DBNet implementations draw):
#: a pixel belongs to a filled outline when its centre lies within half a pixel of it.
PIXEL_HALF = 0.5


def shrink_distance(points: np.ndarray, ratio: float) -> float:
    """DB's offset D = A(1 − r²)/L."""
    import cv2

    contour = points.astype(np.float32)
    perimeter = cv2.arcLength(contour, True)
    return cv2.contourArea(contour) * (1.0 - ratio**2) / perimeter if perimeter > 0 else 0.0


def make_targets(
    polygons: Sequence[np.ndarray],
    ignore: Sequence[bool],
    height: int,
    width: int,
    shrink_ratio: float = 0.4,
    thresh_min: float = 0.3,
    thresh_max: float = 0.7,
) -> dict[str, np.ndarray]:
    """All four DB maps for one image; float32 arrays of shape (height, width)."""
    import cv2

    shrink_map = np.zeros((height, width), dtype=np.float32)
    shrink_mask = np.ones((height, width), dtype=np.float32)
    thresh_mask = np.zeros((height, width), dtype=np.float32)
    border = np.zeros((height, width), dtype=np.float32)

    for points, is_ignored in zip(polygons, ignore, strict=True):
        points = np.asarray(points, dtype=np.float64)
        distance = 0.0 if is_ignored else shrink_distance(points, shrink_ratio)
        if distance <= 0:
            cv2.fillPoly(shrink_mask, [np.round(points).astype(np.int32)], 0.0)
            continue
        # Everything within D of the polygon lies in its box grown by D.
        (low_x, low_y), (high_x, high_y) = points.min(axis=0).tolist(), points.max(axis=0).tolist()
        x0, y0 = max(math.floor(low_x - distance), 0), max(math.floor(low_y - distance), 0)
        x1, y1 = min(math.ceil(high_x + distance), width - 1), min(math.ceil(high_y + distance), height - 1)
        if x1 < x0 or y1 < y0:
            continue
        nearest = edge_distance(points, x0, y0, x1, y1)
        inside = np.zeros(nearest.shape, dtype=np.uint8)
        cv2.fillPoly(inside, [np.round(points - (x0, y0)).astype(np.int32)], 1)
        inside = inside.view(bool)
        window = (slice(y0, y1 + 1), slice(x0, x1 + 1))

        # Shrinking by D (round joins) keeps the inside points at least D from the edges; dilating by D adds
        # the points within D. Both follow from the distance field, without polygon offsetting.
        kernel = inside & (nearest >= distance - PIXEL_HALF)
        if not kernel.any():
            _draw_centre_line(shrink_map, points)
        shrink_map[window][kernel] = 1.0
        thresh_mask[window][inside | (nearest < distance + PIXEL_HALF)] = 1.0
        nearest *= np.float32(-1.0 / distance)
        nearest += np.float32(1.0)
        np.maximum(border[window], nearest, out=border[window])

    border *= np.float32(thresh_max - thresh_min)
    border += np.float32(thresh_min)
    return {"shrink_map": shrink_map, "shrink_mask": shrink_mask, "thresh_map": border, "thresh_mask": thresh_mask}


def _draw_centre_line(shrink_map: np.ndarray, points: np.ndarray) -> None:
    """A text line too thin to keep any kernel pixel still gets its centre line, so no text kernel vanishes."""
    import cv2

    (cx, cy), (w, h), angle = cv2.minAreaRect(points.astype(np.float32))
    half = max(w, h) / 2 - min(w, h) / 2
    theta = np.deg2rad(angle if w >= h else angle + 90)
    dx, dy = half * np.cos(theta), half * np.sin(theta)
    start = (int(round(cx - dx)), int(round(cy - dy)))
    end = (int(round(cx + dx)), int(round(cy + dy)))
    cv2.line(shrink_map, start, end, 1.0, thickness=1)


def edge_distance(points: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Exact distance from each pixel centre of the patch [y0, y1] × [x0, x1] to the polygon's edges.

    All edges at once, as (edges, rows, columns) arrays built by broadcasting per-edge constants against a row
    of x and a column of y: about a dozen numpy calls per polygon, on buffers small enough to stay in cache.
    """
    a = points.astype(np.float32)
    ab = np.concatenate([a[1:], a[:1]]) - a
    length2 = np.maximum(np.einsum("ij,ij->i", ab, ab), np.float32(1e-12))
    ux, uy = (ab / length2[:, None]).T[:, :, None, None]  # (E, 1, 1) each
    abx, aby = ab.T[:, :, None, None]
    px = np.arange(x0, x1 + 1, dtype=np.float32)[None, None, :] - a[:, 0, None, None]  # (E, 1, W)
    py = np.arange(y0, y1 + 1, dtype=np.float32)[None, :, None] - a[:, 1, None, None]  # (E, H, 1)
    t = px * ux + py * uy  # (E, H, W): projection parameter along each edge
    np.clip(t, 0.0, 1.0, out=t)
    dx = px - t * abx
    t *= aby
    np.subtract(py, t, out=t)  # t now holds dy
    dx *= dx
    t *= t
    dx += t
    return np.sqrt(dx.min(axis=0))
