"""Geometric and colour augmentation with polygons transformed exactly.

Scale, rotation, crop/placement and LongestMaxSize + pad are composed into one 2×3 affine matrix applied once to
the pixels (``cv2.warpAffine``) and once to the polygon points, so boxes and pixels cannot drift apart and the
image is resampled only once. Polygons are then clipped to the output and re-validated by
:func:`dbtk.data.polygons.repair_all` (text that became too small turns into don't-care): :func:`crop_labels`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dbtk.data.polygons import MIN_AREA, by_point_count, repair, settle_stack, short_side, simple_stack

if TYPE_CHECKING:
    from dbtk.recipe import Data


@dataclass(frozen=True)
class AugmentConfig:
    """What the geometry needs from ``[data]``: output size, mode (resize or crop) and random ranges."""

    size: int  # output side
    crop: bool  # True: crops at native scale; False: LongestMaxSize to `size` + pad
    random: bool
    scale_min: float = 1.0
    scale_max: float = 1.0
    rotate: float = 0.0
    color_jitter: float = 0.0

    @classmethod
    def from_recipe(cls, data: Data, train: bool) -> AugmentConfig:
        random = train and data.augment
        return cls(
            size=data.crop or data.image_size,
            crop=bool(data.crop),
            random=random,
            scale_min=data.scale_min if random else 1.0,
            scale_max=data.scale_max if random else 1.0,
            rotate=data.rotate if random else 0.0,
            color_jitter=data.color_jitter if random else 0.0,
        )


def random_affine(
    rng: np.random.Generator,
    width: int,
    height: int,
    polygons: list[np.ndarray],
    ignore: list[bool],
    config: AugmentConfig,
) -> np.ndarray:
    """A 2×3 matrix mapping source pixels into the ``size`` × ``size`` output window."""
    base = 1.0 if config.crop else config.size / max(width, height)
    scale = base * float(rng.uniform(config.scale_min, config.scale_max)) if config.random else base
    angle = np.deg2rad(float(rng.uniform(-config.rotate, config.rotate))) if config.rotate else 0.0
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    centre = np.array([width / 2.0, height / 2.0])
    linear = np.array([[cos, -sin], [sin, cos]])
    shift = -linear @ centre  # rotate and scale about the image centre
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64) @ linear.T + shift
    low, high = corners.min(axis=0), corners.max(axis=0)
    extent = high - low

    care = [p for p, ign in zip(polygons, ignore, strict=True) if not ign]
    if care and (config.crop or config.random) and rng.random() < 0.9:
        focus = care[int(rng.integers(len(care)))].mean(axis=0) @ linear.T + shift
    else:
        focus = low + rng.uniform(0, 1, 2) * extent if config.random else low
    origin = np.empty(2)
    for axis in range(2):
        if extent[axis] <= config.size:
            # The whole image fits: top-left placement for plain resizing, random placement when augmenting.
            slack = config.size - extent[axis]
            origin[axis] = low[axis] - (rng.uniform(0, slack) if config.random else 0.0)
        else:
            wanted = focus[axis] - (rng.uniform(0.1, 0.9) if config.random or config.crop else 0.0) * config.size
            origin[axis] = np.clip(wanted, low[axis], high[axis] - config.size)
    return np.hstack([linear, (shift - origin)[:, None]])


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    import cv2

    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 0.75 and abs(matrix[0, 1]) < 1e-9 and abs(matrix[1, 0]) < 1e-9:
        # Pure scale + shift: resize with area averaging first (warpAffine ignores INTER_AREA), then place.
        sx, sy = matrix[0, 0], matrix[1, 1]
        resized = cv2.resize(image, None, fx=sx, fy=sy, interpolation=cv2.INTER_AREA)
        # cv2.resize aligns pixel centres: x_resized = s·x + (s − 1)/2; undo that offset when placing.
        placed = np.array([[1.0, 0.0, matrix[0, 2] - (sx - 1) / 2], [0.0, 1.0, matrix[1, 2] - (sy - 1) / 2]])
        return _warp_bilinear(resized, placed, size)
    if scale < 0.75:
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA, borderValue=(0, 0, 0))
    return _warp_bilinear(image, matrix, size)


def _warp_bilinear(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``cv2.warpAffine`` with bilinear interpolation and black borders, the same values, less time for colour.

    OpenCV's bilinear warp has a vectorised path for 4 channels and none for 3: padding a colour image to 4
    channels and dropping the 4th after costs about half the 3-channel warp (docs/benchmarks.md, loader). Only the
    part of the page the output reads (its corners mapped back, +3 px for the interpolation) is padded, in place in
    a page-sized buffer, so the warp runs on the page's own coordinates: every sampling position stays as it was.
    """
    import cv2

    if image.ndim != 3 or image.shape[2] != 3:
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    height, width = image.shape[:2]
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], dtype=np.float64)
    source = corners @ cv2.invertAffineTransform(matrix).T
    low = [min(max(int(np.floor(v)) - 3, 0), limit) for v, limit in zip(source.min(axis=0), (width, height), strict=True)]
    high = [min(max(int(np.floor(v)) + 4, 0), limit) for v, limit in zip(source.max(axis=0), (width, height), strict=True)]
    four = np.empty((height, width, 4), dtype=image.dtype)  # outside the part the output reads: never read
    if high[0] > low[0] and high[1] > low[1]:
        window = (slice(low[1], high[1]), slice(low[0], high[0]))
        cv2.cvtColor(image[window], cv2.COLOR_BGR2BGRA, dst=four[window])
    else:  # the output shows none of the page: nothing is read
        four[:1, :1] = 0
    warped = cv2.warpAffine(four, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    return cv2.cvtColor(warped, cv2.COLOR_BGRA2BGR)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_labels(
    polygons: Sequence[np.ndarray], ignore: Sequence[bool], matrix: np.ndarray, size: int, min_size: float
) -> tuple[list[np.ndarray], list[bool]]:
    """The page's repaired polygons in the ``size`` × ``size`` output: moved by ``matrix``, clipped, sized.

    The page's labels are repaired already, and an affine map without reflection keeps them valid and clockwise:
    what is left to decide is the crop (outside: dropped, across its border: clipped) and the size. The result is
    :func:`dbtk.data.polygons.repair_all` of every moved polygon, survivors kept — but all points move in one
    array operation, a polygon whose bounding box misses the output is dropped before repair (repair drops it
    too: nothing of it has area inside), and those across the border are clipped together
    (:func:`_clip_to_crop`), so a crop of a page pays only for the lines it shows.
    """
    if not len(polygons):
        return [], []
    lengths = np.array([len(points) for points in polygons])
    starts = np.cumsum(lengths) - lengths
    moved = transform_points(np.concatenate(polygons), matrix)
    low, high = np.minimum.reduceat(moved, starts), np.maximum.reduceat(moved, starts)
    shown = ((high > 0) & (low < size)).all(axis=1)
    within = ((low >= 0) & (high <= size)).all(axis=1)
    found: dict[int, tuple[np.ndarray, bool] | None] = {}
    inner = np.flatnonzero(shown & within)
    for count in np.unique(lengths[inner]).tolist():
        rows = inner[lengths[inner] == count]
        stack = moved[starts[rows, None] + np.arange(count)]  # (m, count, 2): the group's points, one gather
        settled = settle_stack(stack, size, size, [ignore[i] for i in rows.tolist()], min_size)
        for at, (index, fixed) in enumerate(zip(rows.tolist(), settled, strict=True)):
            if fixed is None:
                fixed = repair(stack[at], size, size, ignore=ignore[index], min_size=min_size)
            found[index] = None if fixed.dropped else (fixed.points, fixed.ignore)
    crossing = {i: moved[starts[i] : starts[i] + lengths[i]] for i in np.flatnonzero(shown & ~within).tolist()}
    found.update(_clip_to_crop(crossing, ignore, size, min_size))
    kept = [found[i] for i in sorted(found) if found[i] is not None]
    return [points for points, _ in kept], [flag for _, flag in kept]


def _clip_to_crop(
    crossing: dict[int, np.ndarray], ignore: Sequence[bool], size: int, min_size: float
) -> dict[int, tuple[np.ndarray, bool] | None]:
    """:func:`dbtk.data.polygons.repair` of polygons across the output's border (None: dropped), with the shapely
    work done for all of them in a few array calls.

    For a valid polygon without repeated points, repair keeps the largest part of its intersection with the output;
    the usual outcome, one polygon whose ring has no repeated points, is settled here as repair settles it
    (clockwise, don't-care when its short side is under ``min_size``), everything else by repair itself.
    """
    import shapely

    box = shapely.box(0, 0, size, size)
    found: dict[int, tuple[np.ndarray, bool] | None] = {}
    for indices in by_point_count(crossing.items()).values():
        points = np.stack([crossing[i] for i in indices])  # (m, k, 2)
        simple, _ = simple_stack(points)
        clipped = shapely.intersection(shapely.polygons(points), box)
        single = simple & (shapely.get_type_id(clipped) == shapely.GeometryType.POLYGON) & ~shapely.is_empty(clipped)
        areas = shapely.area(clipped)
        rings = _rings(clipped[single])
        for row, index in enumerate(indices):
            ring, ring_area, ring_repeats = next(rings) if single[row] else (None, 0.0, True)
            if ring_repeats:
                fixed = repair(points[row], size, size, ignore=ignore[index], min_size=min_size)
                found[index] = None if fixed.dropped else (fixed.points, fixed.ignore)
            elif areas[row] < MIN_AREA:
                found[index] = None
            else:
                ring32 = (ring if ring_area >= 0 else ring[::-1]).astype(np.float32)
                tiny = not ignore[index] and min_size > 0 and short_side(ring32) < min_size
                found[index] = (ring32, ignore[index] or tiny)
    return found


def _rings(polygons: np.ndarray) -> Iterator[tuple[np.ndarray, float, bool]]:
    """(exterior ring without its closing point, signed area, whether two neighbouring points repeat) of each
    shapely polygon, read out with one coordinate call for all of them."""
    import shapely

    coords, owner = shapely.get_coordinates(shapely.get_exterior_ring(polygons), return_index=True)
    starts = np.searchsorted(owner, np.arange(len(polygons) + 1))
    # Consecutive points, the closing one included, so each ring's pairs go all the way round.
    step = coords[1:] - coords[:-1]
    same_ring = owner[1:] == owner[:-1]
    repeats = (np.abs(step) <= 1e-6).all(axis=1) & same_ring
    cross = np.where(same_ring, coords[:-1, 0] * coords[1:, 1] - coords[1:, 0] * coords[:-1, 1], 0.0)
    for i in range(len(polygons)):
        first, last = starts[i], starts[i + 1]  # the ring is coords[first:last], its last point = its first
        yield coords[first : last - 1], 0.5 * float(cross[first : last - 1].sum()), bool(repeats[first : last - 1].any())


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation jitter, occasionally grayscale; uint8 in, uint8 out.

    All three are affine maps of a pixel's colour, so they compose into one 3×4 colour matrix applied in a single
    rounding, saturating pass (``cv2.transform``) — no intermediate image. Saturation blends each pixel with its
    channel mean (grayscale: the mean alone), which keeps every pixel's channel mean, so the mean that contrast
    turns about is the input's: ``out = b·(c·(blend(x) − m) + m)``.
    """
    if strength <= 0:
        return image
    import cv2

    saturation = 0.0 if rng.random() < 0.1 else rng.uniform(1 - strength, 1 + strength)
    mean = sum(cv2.mean(image)[:3]) / 3.0
    contrast = rng.uniform(1 - strength, 1 + strength)
    brightness = rng.uniform(1 - strength, 1 + strength)
    blend = saturation * np.eye(3) + (1.0 - saturation) / 3.0 * np.ones((3, 3))
    matrix = np.hstack([contrast * brightness * blend, np.full((3, 1), mean * brightness * (1.0 - contrast))])
    return cv2.transform(image, matrix)
