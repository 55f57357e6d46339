"""DB training targets: shrink (probability) map + mask, threshold map + mask.

Follows the DBNet paper: each text polygon is shrunk by ``D = A(1 − r²)/L`` (A area, L perimeter, r the shrink
ratio) for the probability map and dilated by D for the threshold map, whose value is
``1 − dist(pixel, polygon edges)/D`` clipped to [0, 1], rescaled to [thresh_min, thresh_max].

Exactness: one exact signed distance field per polygon (negative inside), over its box grown by D, gives all three
geometric sets at once — the shrunk kernel (inside and ≥ D from the edges: what a round-join offset by −D
produces), the dilated region (< D from the polygon: the round-join offset by +D) and the threshold values — so no
polygon offsetting (pyclipper) and no per-pixel Python is needed.

Speed: almost every label is a convex polygon (a line's box stays a convex quadrilateral under the augmentation's
affine map), and for a convex polygon the field is cheap. Inside, the distance to the outline is the distance to
the nearest edge's line; outside it is the largest of the edges' signed line distances too, except in the wedge
beyond each corner, where it is the distance to the corner. So the field is, per edge, a row plus a column
broadcast against each other and the largest kept, then corrected in the corner wedges — which are found for all
the polygons of an image in a few array operations, and only out to where the line distances already put a pixel
beyond the dilated region. Other polygons (curved lines with 2 × N points, concave or very sharp shapes) take the
general field: the exact point-to-segment distance to every edge, with the pixel centres inside found by counting
edge crossings. tests/test_targets_reference.py holds both to a plain reference.

Coordinates follow the OpenCV / DBNet convention: pixel (i, j) has its centre at (x=j, y=i); a pixel is inside when
its centre is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from dbtk.data.polygons import by_point_count, predecessor, successor, twice_areas

#: Pixel-centre conventions matching cv2.fillPoly on the offset polygon (what DBNet implementations draw):
#: a pixel belongs to a filled outline when its centre lies within half a pixel of it.
PIXEL_HALF = 0.5
#: A corner whose neighbouring edge normals are more than ~139° apart (cos of half that angle below this) has a
#: corner wedge too wide to correct cheaply; its polygon takes the general field.
MIN_CORNER_COS = 0.35


def shrink_distance(points: np.ndarray, ratio: float) -> float:
    """DB's offset D = A(1 − r²)/L of one polygon."""
    return float(shrink_distances(np.asarray(points, dtype=np.float64)[None], ratio)[0])


def shrink_distances(points: np.ndarray, ratio: float) -> np.ndarray:
    """D = A(1 − r²)/L for a stack of polygons with equal point counts, shape (P, n, 2); 0 where L is 0."""
    return _Stack.of(points).shrink_distances(ratio)


@dataclass(frozen=True)
class _Stack:
    """Polygons with equal point counts, (P, n, 2) float64, with the edge geometry that D, the convexity test and
    the convex fields all use — computed once."""

    points: np.ndarray
    edges: np.ndarray  # edge j runs from point j to point j + 1
    lengths: np.ndarray  # (P, n)
    twice_area: np.ndarray  # (P,) signed shoelace sums

    @classmethod
    def of(cls, points: np.ndarray) -> _Stack:
        edges = points[:, successor(points.shape[1])] - points
        return cls(points, edges, np.hypot(edges[..., 0], edges[..., 1]), twice_areas(points))

    def take(self, rows: np.ndarray) -> _Stack:
        return _Stack(self.points[rows], self.edges[rows], self.lengths[rows], self.twice_area[rows])

    def shrink_distances(self, ratio: float) -> np.ndarray:
        perimeter = self.lengths.sum(axis=1)
        return np.abs(self.twice_area) / 2 * (1.0 - ratio**2) / np.where(perimeter > 0, perimeter, np.inf)


def make_targets(
    polygons: Sequence[np.ndarray],
    ignore: Sequence[bool],
    height: int,
    width: int,
    shrink_ratio: float = 0.4,
    thresh_min: float = 0.3,
    thresh_max: float = 0.7,
) -> dict[str, np.ndarray]:
    """All four DB maps for one image, shape (height, width): ``thresh_map`` float32, the three masks uint8 0/1
    (a quarter of the bytes to stack, pin and copy to the device; the trainer hands the loss float32)."""
    import cv2

    if not thresh_max > thresh_min:
        raise ValueError(f"thresh_max ({thresh_max}) must be greater than thresh_min ({thresh_min})")
    span = thresh_max - thresh_min
    shrink_map = np.zeros((height, width), dtype=np.uint8)
    shrink_mask = np.ones((height, width), dtype=np.uint8)
    thresh_mask = np.zeros((height, width), dtype=np.uint8)
    thresh_map = np.full((height, width), thresh_min, dtype=np.float32)

    shapes = [np.asarray(points, dtype=np.float64) for points in polygons]
    grouped = by_point_count(enumerate(shapes)).values()
    groups = [(members, _Stack.of(np.stack([shapes[i] for i in members]))) for members in grouped]
    distances = np.zeros(len(shapes))
    for members, stack in groups:
        distances[members] = stack.shrink_distances(shrink_ratio)
    text = np.zeros(len(shapes), dtype=bool)
    for index, (points, is_ignored) in enumerate(zip(shapes, ignore, strict=True)):
        if is_ignored or not distances[index] > 0:
            cv2.fillPoly(shrink_mask, [np.round(points).astype(np.int32)], 0)
        else:
            text[index] = True

    # The field is the signed distance in units of D/span, so that the threshold value thresh_min + span·(1 − d/D)
    # is thresh_min + span − |field| — no rescaling pass over the map. The kernel is field ≤ span·min(½ − D, 0)/D
    # (inside and at least D − ½ from the edges), the dilated region field < span·(D + ½)/D.
    scale = np.maximum(distances, 1e-12) / span
    kernel_limits = (np.minimum(PIXEL_HALF - distances, 0.0) / scale).astype(np.float32).tolist()
    band_limits = ((distances + PIXEL_HALF) / scale).astype(np.float32).tolist()
    on_edge = np.float32(thresh_min + span)
    for index, x0, y0, field in _fields(groups, text, distances, scale, height, width):
        # OpenCV's max takes a few times less call overhead than numpy's on these small windows (views).
        window = (slice(y0, y0 + field.shape[0]), slice(x0, x0 + field.shape[1]))
        if cv2.minMaxLoc(field)[0] <= kernel_limits[index]:
            target = shrink_map[window]
            cv2.max(target, (field <= kernel_limits[index]).view(np.uint8), dst=target)
        else:
            _draw_centre_line(shrink_map, shapes[index])
        target = thresh_mask[window]
        cv2.max(target, (field < band_limits[index]).view(np.uint8), dst=target)
        np.abs(field, out=field)
        np.subtract(on_edge, field, out=field)
        target = thresh_map[window]
        cv2.max(target, field, dst=target)

    return {"shrink_map": shrink_map, "shrink_mask": shrink_mask, "thresh_map": thresh_map, "thresh_mask": thresh_mask}


def _fields(
    groups: list[tuple[list[int], _Stack]], text: np.ndarray, distances: np.ndarray, units: np.ndarray,
    height: int, width: int,
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(index, x0, y0, field) for each text polygon whose box grown by D meets the image: its signed distance field
    divided by its ``units`` entry, float32, over that box clipped to the image, (x0, y0) the box's top-left pixel."""
    for members, whole in groups:
        chosen = np.flatnonzero(text[members])
        if not len(chosen):
            continue
        indices = [members[row] for row in chosen.tolist()]
        stack = whole.take(chosen)
        group_distances, group_units = distances[indices], units[indices]
        low = np.floor(stack.points.min(axis=1) - group_distances[:, None]).astype(np.int64)
        high = np.ceil(stack.points.max(axis=1) + group_distances[:, None]).astype(np.int64)
        np.maximum(low, 0, out=low)
        np.minimum(high, (width - 1, height - 1), out=high)
        shown = (high >= low).all(axis=1)
        convex = shown & _cheap_convex(stack)
        if convex.any():
            rows = np.flatnonzero(convex)
            owners = [indices[row] for row in rows.tolist()]
            fields = _convex_fields(stack.take(rows), group_distances[rows], group_units[rows], low[rows], high[rows])
            for row, x0, y0, field in fields:
                yield owners[row], x0, y0, field
        for row in np.flatnonzero(shown & ~convex).tolist():
            (x0, y0), (x1, y1) = low[row].tolist(), high[row].tolist()
            yield indices[row], x0, y0, _general_field(stack.points[row], group_units[row], x0, y0, x1, y1)


def _cheap_convex(stack: _Stack) -> np.ndarray:
    """Which polygons of the stack are convex, simple, without zero-length edges and without corners sharper than
    :data:`MIN_CORNER_COS` allows: those :func:`_convex_fields` handles."""
    edges, lengths = stack.edges, stack.lengths
    following = edges[:, successor(edges.shape[1])]
    cross = edges[..., 0] * following[..., 1] - edges[..., 1] * following[..., 0]
    dot = (edges * following).sum(axis=-1)
    turn = np.arctan2(cross, dot)  # signed turn at each corner
    one_way = (cross >= 0).all(axis=1) | (cross <= 0).all(axis=1)
    once_around = np.abs(np.abs(turn.sum(axis=1)) - 2 * np.pi) < 1e-6  # not a star
    cos_half = np.cos(np.abs(turn) / 2)  # the angle between neighbouring outward normals is the turn
    return (lengths > 1e-6).all(axis=1) & one_way & once_around & (cos_half >= MIN_CORNER_COS).all(axis=1)


def _convex_fields(
    stack: _Stack, distances: np.ndarray, units: np.ndarray, low: np.ndarray, high: np.ndarray
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(row, x0, y0, field) for a stack of convex polygons; see the module docstring.

    Per polygon the field is the largest of its edges' signed line distances: a row plus a column per edge, both
    computed for the whole stack at once, so a polygon costs a broadcast sum and a maximum. The corner wedges'
    exact values for the whole stack come from :func:`_corner_wedges` and are written over them.
    """
    points, edges = stack.points, stack.edges
    # Outward unit normals; divided by the unit for the field, which then comes out in those units without a pass.
    normals = np.stack([edges[..., 1], -edges[..., 0]], axis=-1)
    normals *= (np.sign(stack.twice_area)[:, None] / stack.lengths)[..., None]
    scaled = normals / units[:, None, None]
    offsets = -(scaled * points).sum(axis=-1)  # s_j(p)/unit = n_j/unit · p + offset_j
    xs = np.arange(int(high[:, 0].max()) + 1, dtype=np.float64)
    ys = np.arange(int(high[:, 1].max()) + 1, dtype=np.float64)
    rows = (scaled[:, :, 0, None] * xs + offsets[:, :, None]).astype(np.float32)  # (P, n, W)
    columns = (scaled[:, :, 1, None] * ys).astype(np.float32)[:, :, :, None]  # (P, n, H, 1)
    flat, values, bounds = _corner_wedges(points, edges, normals, distances, units, low, high)
    for row, ((x0, y0), (x1, y1)) in enumerate(zip(low.tolist(), high.tolist(), strict=True)):
        field = (columns[row, :, y0 : y1 + 1] + rows[row, :, None, x0 : x1 + 1]).max(axis=0)
        first, last = bounds[row], bounds[row + 1]
        if last > first:
            field.reshape(-1)[flat[first:last]] = values[first:last]
        yield row, x0, y0, field


def _corner_wedges(
    points: np.ndarray, edges: np.ndarray, normals: np.ndarray, distances: np.ndarray, units: np.ndarray,
    low: np.ndarray, high: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Flat indices into the polygons' fields and the exact distances (in the fields' units) of the pixels in the
    wedges beyond their corners, where the distance is to the corner rather than to an edge's line; polygon i's
    entries are ``flat[bounds[i]:bounds[i + 1]]``.

    In the wedge of a corner the edge-line distances that matter are those of its two edges, a and b, and the
    pixels whose maps the correction changes are those with max(a, b) < r = D + ½ (beyond, both values leave the
    pixel outside the dilated region): the kite from the corner to r along each outward normal and to their miter
    point r·(n₁ + n₂)/(1 + cos θ). Each corner is searched in its kite's bounding box, the corners of like size
    together in one dense (corners, rows, columns) block.
    """
    previous = predecessor(points.shape[1])
    incoming, before, after = edges[:, previous], normals[:, previous], normals  # corner j: edges j − 1 and j
    cos_turn = np.clip((before * after).sum(axis=-1), -0.99, 1.0)  # sharper corners never get here
    reach = (distances + PIXEL_HALF)[:, None, None, None]
    kite = np.stack([np.zeros_like(before), before, after, (before + after) / (1.0 + cos_turn)[..., None]], axis=-2)
    kite *= reach
    start = np.ceil(points + kite.min(axis=-2) - PIXEL_HALF).astype(np.int64)  # (P, n, 2): first column, row
    count = np.floor(points + kite.max(axis=-2) + PIXEL_HALF).astype(np.int64) - start + 1
    polygon, corner = np.nonzero((count > 0).all(axis=-1))
    if not len(polygon):
        return np.zeros(0, np.int64), np.zeros(0, np.float32), [0] * (len(points) + 1)
    # Body-text corners share one block; a corner more than three times the median size (a heading's) gets a
    # block of its own size class, so one large line does not make every corner's block large.
    size = count[polygon, corner].max(axis=1)
    size_class = np.where(size > 3 * np.median(size), np.ceil(np.log2(size)), 0)
    found = [
        _wedge_pixels(points, incoming, edges, units, low, high, start, count, polygon[chosen], corner[chosen])
        for chosen in (size_class == value for value in np.unique(size_class).tolist())
    ]
    owner, flat, value = (np.concatenate(parts) for parts in zip(*found, strict=True))
    if len(found) > 1:
        order = np.argsort(owner, kind="stable")
        owner, flat, value = owner[order], flat[order], value[order]
    return flat, value, np.searchsorted(owner, np.arange(len(points) + 1)).tolist()


def _wedge_pixels(
    points: np.ndarray, incoming: np.ndarray, edges: np.ndarray, units: np.ndarray, low: np.ndarray,
    high: np.ndarray, start: np.ndarray, count: np.ndarray, polygon: np.ndarray, corner: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner polygon, flat index into its field, distance in the field's units) of the wedge pixels of the given
    corners (sorted by polygon), in float32 and small integers: each test compares a row term with a column term,
    one pass."""
    span = count[polygon, corner].max(axis=0)
    px = start[polygon, corner, 0, None] + np.arange(span[0])  # (V, w) pixel columns
    py = start[polygon, corner, 1, None] + np.arange(span[1])  # (V, h) pixel rows
    vertex = points[polygon, corner]
    ux, uy = (px - vertex[:, 0, None]).astype(np.float32), (py - vertex[:, 1, None]).astype(np.float32)
    edge_in, edge_out = incoming[polygon, corner].astype(np.float32), edges[polygon, corner].astype(np.float32)
    # Past the incoming edge's end: u·e_in ≥ 0; before the outgoing edge starts: u·e_out ≤ 0.
    wedge = np.greater_equal((ux * edge_in[:, :1])[:, None, :], (-uy * edge_in[:, 1:])[:, :, None])
    wedge &= np.less_equal((ux * edge_out[:, :1])[:, None, :], (-uy * edge_out[:, 1:])[:, :, None])
    x0, y0 = low[polygon, 0, None], low[polygon, 1, None]
    wedge &= ((px >= x0) & (px <= high[polygon, 0, None]))[:, None, :]
    wedge &= ((py >= y0) & (py <= high[polygon, 1, None]))[:, :, None]
    width = (high[polygon, 0] - low[polygon, 0] + 1)[:, None]
    flat = (((py - y0) * width)[:, :, None] + (px - x0)[:, None, :])[wedge]
    squared = ((ux * ux)[:, None, :] + (uy * uy)[:, :, None])[wedge]
    owner = np.repeat(polygon, wedge.sum(axis=(1, 2)))
    return owner, flat, np.sqrt(squared) / units[owner].astype(np.float32)


def _general_field(points: np.ndarray, unit: float, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Any polygon: exact distance to its nearest edge, negated where the pixel centre is inside, in ``unit``s."""
    field = edge_distance(points, x0, y0, x1, y1)
    np.negative(field, out=field, where=_inside(points, x0, y0, x1, y1))
    field *= np.float32(1.0 / unit)
    return field


def _inside(points: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Which pixel centres of the patch lie inside the polygon: an odd number of edges cross the ray to their left
    (the even-odd rule; edges meeting a row at their upper end count, at their lower end not)."""
    a, b = points, np.roll(points, -1, axis=0)
    ys = np.arange(y0, y1 + 1, dtype=np.float64)
    straddles = (a[:, 1, None] > ys) != (b[:, 1, None] > ys)  # (E, H)
    rise = np.where(straddles, b[:, 1, None] - a[:, 1, None], 1.0)
    crossing_x = a[:, 0, None] + (ys - a[:, 1, None]) * (b[:, 0, None] - a[:, 0, None]) / rise  # (E, H)
    xs = np.arange(x0, x1 + 1, dtype=np.float64)
    crosses = straddles[:, :, None] & (xs < crossing_x[:, :, None])  # (E, H, W)
    return np.logical_xor.reduce(crosses, axis=0)


def _draw_centre_line(shrink_map: np.ndarray, points: np.ndarray) -> None:
    """A text line too thin to keep any kernel pixel still gets its centre line, so no text kernel vanishes."""
    import cv2

    (cx, cy), (w, h), angle = cv2.minAreaRect(points.astype(np.float32))
    half = max(w, h) / 2 - min(w, h) / 2
    theta = np.deg2rad(angle if w >= h else angle + 90)
    dx, dy = half * np.cos(theta), half * np.sin(theta)
    start = (int(round(cx - dx)), int(round(cy - dy)))
    end = (int(round(cx + dx)), int(round(cy + dy)))
    cv2.line(shrink_map, start, end, 1, thickness=1)


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
