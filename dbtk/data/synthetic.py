"""The ``synthetic`` dataset: text lines rendered with OpenCV on varied backgrounds, no download needed.

Each image is a pure function of (seed, split name, index), so a split is reproducible and train/val differ.
Used by the quickstart recipe and by tests.
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
    from dbtk.recipe import Split

_FONTS = (0, 1, 2, 3, 4, 6, 7)  # cv2.FONT_HERSHEY_* faces that render Latin text
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _require(condition: bool, message: str) -> None:
    """Parameters are checked when the reader is built, so ``recipe check`` refuses what could not render."""
    if not condition:
        raise DbtkError(f"dataset 'synthetic': {message}")


class SyntheticText:
    """``count`` images (``val_count`` for the split named "val") of ``width`` × ``height``, 3–``max_lines`` lines each.

    Lines get random fonts, sizes (``min_height``–``max_height`` px), colours, a shared page rotation up to
    ``rotate`` degrees, background gradients or noise textures, blur and sensor noise.
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
        seed: int = 0,
    ) -> None:
        _require(count >= 1 and val_count >= 1, f"count and val_count must be at least 1, got {count} and {val_count}")
        _require(32 <= width <= 4096 and 32 <= height <= 4096, f"width and height must be 32-4096 px, got {width}×{height}")
        _require(1 <= max_lines <= 64, f"max_lines must be 1-64, got {max_lines}")
        _require(4 <= min_height <= max_height <= height - 16,
                 f"need 4 <= min_height <= max_height <= height - 16, got {min_height}, {max_height} (height {height})")
        _require(0 <= rotate <= 45, f"rotate must be 0-45 degrees, got {rotate}")
        name = split.images if split is not None else "train"
        self.count = val_count if name == "val" else count
        self.width, self.height = width, height
        self.max_lines = max_lines
        self.min_height, self.max_height = min_height, max_height
        self.rotate = rotate
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
        return f"synthetic|{self.seed}|{self.split_key}|{index}|{self.width}x{self.height}|{self.max_lines}"

    def load(self, index: int) -> RawSample:
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
