"""The ``synthetic`` dataset: text lines rendered with OpenCV on varied backgrounds, no download needed.

Each image is a pure function of (seed, split name, index), so a split is reproducible and train/val differ.
Used by the quickstart recipe and by tests. With ``curved > 0`` that fraction of the lines is bent along a
circular arc and labelled with a polygon of :data:`CURVE_POINTS` points along each edge, so curved-text training,
polygon post-processing and polygon scoring can be shown and tested without a dataset download.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dbtk.data.images import Decoded
from dbtk.data.reader import Annotation, Problem, RawSample
from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.data.images import DrawScale
    from dbtk.recipe import Split

#: The most images a synthetic split may hold: an epoch's shuffled order alone costs 8 bytes an image, and a
#: count near 2**64 overflows it — far beyond any run (images are drawn on the fly, one per index).
MAX_COUNT = 100_000_000

_FONTS = (0, 1, 2, 3, 4, 6, 7)  # cv2.FONT_HERSHEY_* faces that render Latin text
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#: Points along each long edge of a curved line's label (2 × this many in all): the chords then stay within half a
#: pixel of the arc for every bend and line length the reader draws.
CURVE_POINTS = 8
#: Total bend of a curved line, in radians of arc (about 35° to 90°)...
BEND = (0.6, 1.6)
#: ...but no tighter than a radius of this many line heights, so short words do not fold onto themselves.
MIN_RADIUS = 1.5


def _require(condition: bool, message: str) -> None:
    """Parameters are checked when the reader is built, so ``recipe check`` refuses what could not render."""
    if not condition:
        raise DbtkError(f"dataset 'synthetic': {message}")


class SyntheticText:
    """``count`` images (``val_count`` for the split named "val") of ``width`` × ``height``, 3–``max_lines`` lines each.

    Lines get random fonts, sizes (``min_height``–``max_height`` px), colours, a shared page rotation up to
    ``rotate`` degrees, background gradients or noise textures, blur and sensor noise. A fraction ``curved`` of
    the lines (0 = none, the default, which renders exactly what earlier versions rendered) is drawn along an arc
    bending up or down, labelled with 2 × :data:`CURVE_POINTS` points.
    """

    exif = "display"

    def __init__(
        self,
        split: Split | None = None,
        count: int = 128,
        val_count: int = 32,
        width: int = 320,
        height: int = 320,
        max_lines: int = 8,
        min_height: int = 10,
        max_height: int = 36,
        rotate: float = 10.0,
        curved: float = 0.0,
        seed: int = 0,
    ) -> None:
        _require(1 <= count <= MAX_COUNT and 1 <= val_count <= MAX_COUNT,
                 f"count and val_count must be between 1 and {MAX_COUNT:,}, got {count} and {val_count}")
        _require(32 <= width <= 4096 and 32 <= height <= 4096, f"width and height must be 32-4096 px, got {width}×{height}")
        _require(1 <= max_lines <= 64, f"max_lines must be 1-64, got {max_lines}")
        _require(4 <= min_height <= max_height <= height - 16,
                 f"need 4 <= min_height <= max_height <= height - 16, got {min_height}, {max_height} (height {height})")
        _require(0 <= rotate <= 45, f"rotate must be 0-45 degrees, got {rotate}")
        _require(0 <= curved <= 1, f"curved must be a fraction of the lines, 0-1, got {curved}")
        _require(seed >= 0, f"seed must be 0 or more (numpy seeds are unsigned), got {seed}")
        name = split.images if split is not None else "train"
        self.count = val_count if name == "val" else count
        self.width, self.height = width, height
        self.max_lines = max_lines
        self.min_height, self.max_height = min_height, max_height
        self.rotate = rotate
        self.curved = curved
        self.seed = seed
        self.split_key = zlib.crc32(name.encode())
        self.problems: list[Problem] = []

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        return f"synthetic_{index:05d}.png"

    def source(self, index: int) -> Path | None:
        """Generated pixels: there is no file to copy (clean-data writes the decoded image)."""
        return None

    def identity(self, index: int) -> str:
        # Every rendering parameter: the sample cache must never serve an image drawn with other settings.
        return (f"synthetic|{self.seed}|{self.split_key}|{index}|{self.width}x{self.height}|{self.max_lines}|"
                f"{self.min_height}-{self.max_height}|{self.rotate}|{self.curved}")

    def load(self, index: int, draw: DrawScale | None = None) -> RawSample:
        """Sample ``index`` rendered at full size (``draw`` is not needed: the pages are small)."""
        image, annotations = self.render(index)
        return RawSample(self.name(index), Decoded(image, 1, (self.width, self.height)), annotations)

    def render(self, index: int) -> tuple[np.ndarray, list[Annotation]]:
        import cv2

        rng = np.random.default_rng([self.seed, self.split_key, index])
        image = self._background(rng)
        boxes: list[np.ndarray] = []
        occupied = np.zeros((self.height, self.width), dtype=bool)
        for _ in range(int(rng.integers(min(3, self.max_lines), self.max_lines + 1))):
            placed = self._draw_line(rng, image, occupied)
            if placed is not None:
                boxes.append(placed)
        angle = float(rng.uniform(-self.rotate, self.rotate))
        matrix = cv2.getRotationMatrix2D((self.width / 2, self.height / 2), angle, 1.0)
        image = cv2.warpAffine(image, matrix, (self.width, self.height), borderMode=cv2.BORDER_REFLECT)
        if rng.random() < 0.3:
            image = cv2.GaussianBlur(image, (3, 3), 0)
        noise = rng.normal(0, rng.uniform(0, 8), image.shape)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        annotations = []
        for number, box in enumerate(boxes, start=1):
            rotated = box @ matrix[:, :2].T + matrix[:, 2]
            annotations.append(Annotation(rotated.astype(np.float64), "text", False, number))
        return image, annotations

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        import cv2

        base = rng.integers(120, 256, size=3)
        kind = rng.integers(3)
        if kind == 0:  # flat paper
            image = np.broadcast_to(base, (self.height, self.width, 3)).astype(np.float32)
        elif kind == 1:  # gradient (uneven light)
            ramp = np.linspace(rng.uniform(0.6, 1.0), 1.0, self.width, dtype=np.float32)
            image = base[None, None, :] * ramp[None, :, None] * np.ones((self.height, 1, 1), np.float32)
        else:  # blotchy texture
            small = rng.normal(0, 25, (self.height // 16 + 1, self.width // 16 + 1, 3)).astype(np.float32)
            texture = cv2.resize(small, (self.width, self.height), interpolation=cv2.INTER_CUBIC)
            image = base[None, None, :] + texture
        return np.ascontiguousarray(np.clip(image, 0, 255), dtype=np.uint8)

    def _draw_line(self, rng: np.random.Generator, image: np.ndarray, occupied: np.ndarray) -> np.ndarray | None:
        import cv2

        font = int(rng.choice(_FONTS))
        target_height = rng.uniform(self.min_height, self.max_height)
        (_, base_h), base_baseline = cv2.getTextSize("Hg", font, 1.0, 1)
        scale = target_height / (base_h + base_baseline)
        thickness = max(1, int(round(scale * rng.uniform(1.0, 2.0))))
        words = [
            "".join(rng.choice(list(_ALPHABET), size=int(rng.integers(2, 9))))
            for _ in range(int(rng.integers(1, 4)))
        ]
        text = " ".join(words)
        (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
        if text_w >= self.width - 8:
            return None
        if self.curved and rng.random() < self.curved:  # no draw at curved = 0: straight pages stay as they were
            patch = np.zeros((text_h + baseline + 4, text_w), dtype=np.uint8)
            cv2.putText(patch, text, (0, text_h + 2), font, scale, 255, thickness, cv2.LINE_AA)
            return self._draw_curved(rng, image, occupied, patch)
        for _attempt in range(10):
            x = int(rng.integers(4, self.width - text_w - 4))
            y = int(rng.integers(text_h + 4, self.height - baseline - 4))
            top, bottom = y - text_h - 2, y + baseline + 2
            if not occupied[max(top - 3, 0) : bottom + 3, max(x - 3, 0) : x + text_w + 3].any():
                break
        else:
            return None
        occupied[top:bottom, x : x + text_w] = True
        background = image[top:bottom, x : x + text_w].reshape(-1, 3).mean(axis=0)
        color = tuple(int(c) for c in np.where(background > 128, rng.integers(0, 90, 3), rng.integers(170, 256, 3)))
        cv2.putText(image, text, (x, y), font, scale, color, thickness, cv2.LINE_AA)
        return np.array([[x, top], [x + text_w, top], [x + text_w, bottom], [x, bottom]], dtype=np.float64)

    def _draw_curved(self, rng: np.random.Generator, image: np.ndarray, occupied: np.ndarray, patch: np.ndarray) -> np.ndarray | None:
        """Bend a rendered line (``patch``: white text on black, the straight line's box) along a circular arc.

        A patch point at distance ``u`` along the line and ``v`` above its middle goes to angle ``(u - w/2) / R``
        on the circle of radius ``R + s·v`` about the centre (``s`` = +1 bends the line into an arch, −1 into a
        bowl), so glyphs turn with the curve instead of being sheared. Pixels are drawn by inverting that map
        (``cv2.remap``); the label is the same map applied to points along the patch's top and bottom edges.
        """
        import cv2

        height, width = patch.shape
        bend = float(rng.uniform(*BEND))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        radius = max(width / bend, MIN_RADIUS * height)

        def place(u: np.ndarray, v: float) -> np.ndarray:  # patch (u along, v above the middle) → around the centre
            theta, rho = (u - width / 2) / radius, radius + sign * v
            return np.stack([rho * np.sin(theta), -sign * rho * np.cos(theta)], axis=1)

        along = np.linspace(0.0, width, CURVE_POINTS)
        outline = np.concatenate([place(along, height / 2), place(along[::-1], -height / 2)])  # clockwise
        low, high = outline.min(axis=0), outline.max(axis=0)
        if (high - low >= np.array([self.width, self.height]) - 8).any():
            return None
        for _attempt in range(10):
            centre = np.array([rng.uniform(4 - low[0], self.width - 4 - high[0]), rng.uniform(4 - low[1], self.height - 4 - high[1])])
            polygon = outline + centre
            x0, y0 = np.maximum(np.floor(polygon.min(axis=0)).astype(int) - 3, 0)  # with the straight lines' 3 px gap
            x1, y1 = np.minimum(np.ceil(polygon.max(axis=0)).astype(int) + 3, [self.width - 1, self.height - 1])
            footprint = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
            cv2.fillPoly(footprint, [np.round(polygon - (x0, y0)).astype(np.int32)], 1)
            gap = cv2.dilate(footprint, np.ones((7, 7), np.uint8)).view(bool)
            if not occupied[y0 : y1 + 1, x0 : x1 + 1][gap].any():
                break
        else:
            return None
        occupied[y0 : y1 + 1, x0 : x1 + 1] |= footprint.view(bool)
        ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float32)
        dx, dy = xs - np.float32(centre[0]), ys - np.float32(centre[1])
        map_x = width / 2 + radius * np.arctan2(dx, -sign * dy)
        map_y = height / 2 - sign * (np.hypot(dx, dy) - radius)
        alpha = cv2.remap(patch, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR, borderValue=0)
        alpha = alpha.astype(np.float32)[..., None] / 255.0
        region = image[y0 : y1 + 1, x0 : x1 + 1]
        background = region[footprint.view(bool)].mean(axis=0)
        color = np.where(background > 128, rng.integers(0, 90, 3), rng.integers(170, 256, 3)).astype(np.float32)
        region[...] = np.round(region * (1 - alpha) + color * alpha).astype(np.uint8)
        return polygon
