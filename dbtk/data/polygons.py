"""The one place polygons are validated and repaired — through :func:`dbtk.data.labels.prepare`, training,
``clean-data`` and evaluation all call :func:`repair_all` (and :func:`repair` for one polygon).

A polygon comes out in one of three states: kept (possibly repaired), turned into a don't-care region (too
small to learn from), or dropped (nothing usable is left). Every change is recorded as a :class:`Reason` so
callers can count and report them.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass

import numpy as np


class Reason(str, enum.Enum):
    """Why a polygon was changed or dropped. The string values appear in reports and logs."""

    NON_FINITE = "non_finite"  # NaN, inf or absurdly large (> 1e7 px) coordinates: dropped
    TOO_FEW_POINTS = "too_few_points"  # fewer than 3 distinct points: dropped
    DUPLICATE_POINTS = "duplicate_points"  # repeated consecutive points removed
    ZERO_AREA = "zero_area"  # (near) zero area: dropped
    SELF_INTERSECTION = "self_intersection"  # made valid, largest part kept
    ORIENTATION = "orientation"  # reversed to clockwise (in image coordinates)
    OUT_OF_BOUNDS = "out_of_bounds"  # clipped to the image
    OUTSIDE_IMAGE = "outside_image"  # nothing left inside the image: dropped
    TINY = "tiny"  # shorter side below min_size: kept as don't-care


#: Reasons after which nothing is left of the polygon.
DROPPED = frozenset({Reason.NON_FINITE, Reason.TOO_FEW_POINTS, Reason.ZERO_AREA, Reason.OUTSIDE_IMAGE})
#: Coordinates beyond this (pixels) are not numbers any image can hold: treated as non-finite.
MAX_COORDINATE = 1e7
#: Area below which a polygon is treated as a line or a point (in square pixels).
MIN_AREA = 1e-3


@dataclass(frozen=True)
class Repaired:
    """Outcome of :func:`repair`: ``points`` is None when the polygon was dropped."""

    points: np.ndarray | None  # (N, 2) float32, clockwise in image coordinates (positive shoelace area)
    ignore: bool
    reasons: tuple[Reason, ...]

    @property
    def dropped(self) -> bool:
        return self.points is None


@functools.cache
def successor(count: int) -> np.ndarray:
    """Index of each point's successor around a polygon of ``count`` points (a cheaper ``np.roll(…, -1)``)."""
    return np.roll(np.arange(count), -1)


@functools.cache
def predecessor(count: int) -> np.ndarray:
    """Index of each point's predecessor around a polygon of ``count`` points."""
    return np.roll(np.arange(count), 1)


def twice_areas(points: np.ndarray) -> np.ndarray:
    """Signed shoelace sums of a (..., n, 2) stack of polygons: twice the area, positive for clockwise order in
    image coordinates (y pointing down), like :func:`signed_area`."""
    following = points[..., successor(points.shape[-2]), :]
    return (points[..., 0] * following[..., 1] - following[..., 0] * points[..., 1]).sum(axis=-1)


def signed_area(points: np.ndarray) -> float:
    """Shoelace area; positive for clockwise order in image coordinates (y pointing down)."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + x[-1] * y[0] - x[0] * y[-1])


def short_side(points: np.ndarray) -> float:
    """Shorter side of the polygon's minimum-area rectangle: the text height for a text line."""
    return float(short_sides(np.asarray(points, dtype=np.float32)[None])[0])


def short_sides(points: np.ndarray) -> np.ndarray:
    """:func:`short_side` of each polygon of a (m, k, 2) float32 stack (OpenCV's minAreaRect is well under a
    microsecond a polygon; its per-call conversions were most of the cost)."""
    import cv2

    return np.array([min(cv2.minAreaRect(polygon)[1]) for polygon in points], dtype=np.float64)


def repair(
    points: np.ndarray | list,
    width: int | None = None,
    height: int | None = None,
    *,
    ignore: bool = False,
    min_size: float = 0.0,
) -> Repaired:
    """Validate and repair one polygon against an image of ``width`` × ``height`` (no clipping when None)."""
    reasons: list[Reason] = []
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if np.size(points) else np.zeros((0, 2))
    if not _usable_numbers(pts).all():
        return Repaired(None, ignore, (Reason.NON_FINITE,))

    deduped = _drop_repeats(pts)
    if len(deduped) != len(pts):
        reasons.append(Reason.DUPLICATE_POINTS)
    pts = deduped
    if len(pts) < 3:
        return Repaired(None, ignore, (*reasons, Reason.TOO_FEW_POINTS))
    import shapely

    polygon = shapely.Polygon(pts)
    if polygon.is_valid:
        if polygon.area < MIN_AREA:
            return Repaired(None, ignore, (*reasons, Reason.ZERO_AREA))
        if signed_area(pts) < 0:
            reasons.append(Reason.ORIENTATION)
    else:
        polygon = _largest_part(shapely.make_valid(polygon))
        if polygon is None or polygon.area < MIN_AREA:  # collinear or collapsed: nothing to keep
            return Repaired(None, ignore, (*reasons, Reason.ZERO_AREA))
        reasons.append(Reason.SELF_INTERSECTION)
        pts = _exterior(polygon)

    if width is not None and height is not None:
        inside = (pts[:, 0] >= 0).all() and (pts[:, 1] >= 0).all() and (pts[:, 0] <= width).all() and (pts[:, 1] <= height).all()
        if not inside:
            clipped = _largest_part(polygon.intersection(shapely.box(0, 0, width, height)))
            if clipped is None or clipped.area < MIN_AREA:
                return Repaired(None, ignore, (*reasons, Reason.OUTSIDE_IMAGE))
            reasons.append(Reason.OUT_OF_BOUNDS)
            pts = _exterior(clipped)

    if signed_area(pts) < 0:  # input order, or whatever order shapely returned: always clockwise out
        pts = pts[::-1]
    pts32 = pts.astype(np.float32)
    if not ignore and min_size > 0 and short_side(pts32) < min_size:
        reasons.append(Reason.TINY)
        ignore = True
    return Repaired(pts32, ignore, tuple(reasons))


def _drop_repeats(pts: np.ndarray) -> np.ndarray:
    """Remove consecutive duplicates (including last == first, a closed ring written out)."""
    if len(pts) < 2:
        return pts
    keep = np.any(np.abs(pts - np.roll(pts, 1, axis=0)) > 1e-6, axis=1)
    if not keep.any():
        return pts[:1]
    return pts[keep]


def _largest_part(geometry):  # noqa: ANN001, ANN202 - shapely geometry in, Polygon or None out
    """The largest polygon inside any (multi-part, collection) geometry, or None."""
    import shapely

    polygons, stack = [], [geometry]
    while stack:
        geom = stack.pop()
        if isinstance(geom, shapely.Polygon):
            if not geom.is_empty:
                polygons.append(geom)
        elif hasattr(geom, "geoms"):
            stack.extend(geom.geoms)
    return max(polygons, key=lambda g: g.area) if polygons else None


def _exterior(polygon) -> np.ndarray:  # noqa: ANN001 - shapely Polygon
    coords = np.asarray(polygon.exterior.coords, dtype=np.float64)[:-1]
    return _drop_repeats(coords)


def repair_all(
    polygons: Sequence[np.ndarray],
    width: int | None = None,
    height: int | None = None,
    *,
    ignore: Sequence[bool],
    min_size: float = 0.0,
) -> list[Repaired]:
    """:func:`repair` for every polygon of an image, vectorised: the same results, several times faster.

    Polygons that are finite, free of repeated points, valid (one shapely call for all), of non-zero area and
    inside the image — nearly all of real labels — are settled with array arithmetic; those entirely outside
    the image are dropped the same way; only the rest take the one-polygon path with shapely.
    """
    results: list[Repaired | None] = [None] * len(polygons)
    stackable = ((index, points) for index, points in enumerate(polygons) if _is_point_list(np.shape(points)))
    for indices in by_point_count(stackable).values():
        _settle_simple(polygons, indices, width, height, ignore, min_size, results)
    return [
        result if result is not None else repair(points, width, height, ignore=ignore[i], min_size=min_size)
        for i, (result, points) in enumerate(zip(results, polygons, strict=True))
    ]


def _is_point_list(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and shape[1] == 2 and shape[0] >= 3


def by_point_count(polygons: Iterable[tuple[int, Sized]]) -> dict[int, list[int]]:
    """The indices of ``(index, points)`` pairs grouped by point count: each group stacks into one (m, k, 2) array
    for the array functions here and in the targets."""
    groups: dict[int, list[int]] = {}
    for index, points in polygons:
        groups.setdefault(len(points), []).append(index)
    return groups


def _settle_simple(
    polygons: Sequence[np.ndarray],
    indices: list[int],
    width: int | None,
    height: int | None,
    ignore: Sequence[bool],
    min_size: float,
    results: list[Repaired | None],
) -> None:
    """Fill ``results`` for the polygons (all with the same point count) that need no shapely repair."""
    points = np.array([polygons[i] for i in indices], dtype=np.float64)  # (m, k, 2)
    settled = settle_stack(points, width, height, [ignore[i] for i in indices], min_size)
    for index, fixed in zip(indices, settled, strict=True):
        results[index] = fixed


def settle_stack(
    points: np.ndarray, width: int | None, height: int | None, ignore: list[bool], min_size: float
) -> list[Repaired | None]:
    """:func:`repair` of each polygon of a (m, k, 2) float64 stack that needs no shapely repair — finite, no
    repeated points, valid, of non-zero area, and inside the image or wholly outside it — in array operations;
    None for the others (they need :func:`repair` itself)."""
    simple, area = simple_stack(points)
    points = np.where(simple[:, None, None], points, 0.0)  # the others' numbers may be anything
    if width is None or height is None:
        inside, outside = simple, np.zeros_like(simple)
    else:
        low, high = points.min(axis=1), points.max(axis=1)
        inside = simple & (low >= 0).all(axis=1) & (high[:, 0] <= width) & (high[:, 1] <= height)
        outside = simple & ((high[:, 0] <= 0) | (high[:, 1] <= 0) | (low[:, 0] >= width) | (low[:, 1] >= height))
    results: list[Repaired | None] = [None] * len(points)
    for row in np.flatnonzero(outside).tolist():
        results[row] = Repaired(None, ignore[row], (*_orientation(area[row]), Reason.OUTSIDE_IMAGE))
    rows = np.flatnonzero(inside)
    # Clockwise out, float32, and the size check, for all of them at once.
    clockwise = np.where((area[rows] > 0)[:, None, None], points[rows], points[rows, ::-1]).astype(np.float32)
    flags = [ignore[row] for row in rows.tolist()]
    tiny = np.zeros(len(rows), bool)
    if min_size > 0:
        check = np.flatnonzero(~np.array(flags, bool))
        tiny[check] = short_sides(clockwise[check]) < min_size
    for at, (row, flipped, small) in enumerate(zip(rows.tolist(), (area[rows] < 0).tolist(), tiny.tolist(), strict=True)):
        reasons = (Reason.ORIENTATION,) if flipped else ()
        results[row] = Repaired(clockwise[at], flags[at] or small, (*reasons, Reason.TINY) if small else reasons)
    return results


def simple_stack(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which polygons of a (m, k, 2) float64 stack need no shapely repair — usable numbers, no repeated points,
    an area of at least :data:`MIN_AREA`, valid (one shapely call for those left) — and their signed areas (0 for
    unusable numbers). The one test both :func:`settle_stack` and the crop's clipping use."""
    import shapely

    finite = _usable_numbers(points).all(axis=(1, 2))
    points = np.where(finite[:, None, None], points, 0.0)
    repeated = (np.abs(points - points[:, predecessor(points.shape[1])]) <= 1e-6).all(axis=2).any(axis=1)
    area = 0.5 * twice_areas(points)
    simple = finite & ~repeated & (np.abs(area) >= MIN_AREA)
    simple[simple] = shapely.is_valid(shapely.polygons(points[simple]))
    return simple, area


def _usable_numbers(points: np.ndarray) -> np.ndarray:
    """Finite and within ±:data:`MAX_COORDINATE`: larger values overflow float32 (targets, exports) and break
    GEOS's orientation predicates, so they count as non-finite."""
    return np.isfinite(points) & (np.abs(points) <= MAX_COORDINATE)


def _orientation(area: float) -> tuple[Reason, ...]:
    return (Reason.ORIENTATION,) if area < 0 else ()
