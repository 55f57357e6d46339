"""``Detector``: a model loaded once, then called on images — the one inference path.

Validation during training, ``dbtk eval``, ``dbtk predict`` and exported models all go through
:meth:`Detector.detect_stream` (``detect_arrays`` for lists), so they resize, batch and post-process
identically. The network itself is a *runtime* — torch (checkpoints and bundles) or onnxruntime (``.onnx``
exports) — behind one small interface, so the ONNX path never imports torch. Nothing is written to disk.

Pages too large for one pass (``eval.tile``) go through the same method: at native scale (or ``eval.tile_scale``),
cut into overlapping tiles that are forwarded ``batch_size`` at a time, their probability maps stitched into one
page map (the maximum where tiles overlap) and post-processed once. A line crossing a tile border is one region of
the page map, so it comes out whole and once — no duplicate boxes to merge, no cut lines — and memory is bounded by
one float32 page map (and the scaled page, when ``tile_scale`` is not 1) plus one batch of tiles, whatever the page
size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from dbtk.infer.postprocess import Detections, boxes_from_map

if TYPE_CHECKING:
    import torch

    from dbtk.recipe import Recipe

#: Input sides must be multiples of the encoder's coarsest stride.
STRIDE = 32
#: How many batches of images :meth:`Detector.detect_stream` reads ahead to find equal sizes to batch together.
WINDOW = 8
#: ... and at most this many decoded pixels (384 MB of RGB), whichever comes first: a large --batch-size of large
#: pages must not hold thousands of full-size originals before the first result.
READ_AHEAD_PIXELS = 128 * 2**20

K = TypeVar("K")


class Runtime(Protocol):
    """Runs the network: a uint8 N×H×W×3 RGB batch → N×H×W float32 probability maps."""

    #: Fixed (height, width) input of a static-shape export, or None when any multiple of 32 works.
    input_size: tuple[int, int] | None

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Prepared:
    """One image resized for the network, and how to map its outputs back."""

    tensor: np.ndarray  # h × w × 3 uint8: the image resized (not padded), or one tile of the scaled page
    scale: tuple[float, float]  # original / resized, for x and y
    original: tuple[int, int]  # (width, height)


def resize_for_inference(image: np.ndarray, long_side: int) -> Prepared:
    """Resize so the longer side is ``long_side`` (rounded to a multiple of 32 on both sides)."""
    import cv2

    height, width = image.shape[:2]
    ratio = long_side / max(height, width)
    new_w = max(STRIDE, int(round(width * ratio / STRIDE)) * STRIDE)
    new_h = max(STRIDE, int(round(height * ratio / STRIDE)) * STRIDE)
    interpolation = cv2.INTER_AREA if new_w < width else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return Prepared(resized, (width / new_w, height / new_h), (width, height))


def as_rgb_array(image: Any) -> np.ndarray:
    """Accept a path, an H×W×3 RGB (or H×W gray) uint8 array, or a PIL image."""
    if isinstance(image, (str, Path)):
        from dbtk.data.images import read_image

        return read_image(image).image
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 RGB array, got shape {image.shape}")
        return np.ascontiguousarray(image, dtype=np.uint8)
    if hasattr(image, "convert"):  # PIL.Image, without importing PIL
        return np.asarray(image.convert("RGB"))
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def tile_windows(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of the tiles covering a page, row by row, neighbours sharing at least ``overlap`` px.

    Tiles start every ``tile - overlap`` px and the last of a row or column ends at the page's edge, so every tile
    lies inside the page (none is padded) unless the page is smaller than a tile along that side.
    """

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in _starts(height, tile, overlap) for x in _starts(width, tile, overlap)]


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side start: every ``tile - overlap`` px, the last one ending at the page's edge."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap), length - tile]


def _owned(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """The part of one side each tile answers for: up to the middle of its overlap with the next tile, so every
    pixel comes from the tile whose border is farthest from it (at least ``overlap`` / 2 px away)."""
    starts = _starts(length, tile, overlap)
    bounds = [0, *((start + following + tile) // 2 for start, following in zip(starts, starts[1:], strict=False)), length]
    return list(zip(bounds, bounds[1:], strict=False))


def _read_ahead(iterator: Iterator[tuple[K, np.ndarray]], count: int, pixels: int) -> list[tuple[K, np.ndarray]]:
    """Up to ``count`` items of ``iterator``, fewer once their images hold ``pixels`` (at least one item)."""
    window: list[tuple[K, np.ndarray]] = []
    held = 0
    for item in iterator:
        window.append(item)
        held += item[1].shape[0] * item[1].shape[1]
        if len(window) >= count or held >= pixels:
            break
    return window


class Detector:
    """A DBNet detector ready for inference: ``detector(images) -> list[Detections]``.

    Build it with :meth:`load` (any file dbtk writes), :meth:`from_checkpoint`, :meth:`from_onnx` or
    :meth:`from_model`; the recipe carried by the file supplies resizing and post-processing settings.
    """

    def __init__(self, runtime: Runtime, recipe: Recipe) -> None:
        self.runtime = runtime
        self.configure(recipe)

    def configure(self, recipe: Recipe) -> None:
        """Take resizing and post-processing settings from ``recipe`` (e.g. re-tuned thresholds)."""
        self.recipe = recipe
        self.postprocess = recipe.postprocess
        self.long_side = recipe.eval.long_side
        self.batch_size = recipe.eval.batch_size
        self.tile, self.tile_overlap, self.tile_scale = recipe.eval.tile, recipe.eval.tile_overlap, recipe.eval.tile_scale
        if self.runtime.input_size is not None:  # a static export: resize (or tile) into its fixed input
            self.long_side = min(self.runtime.input_size)
            if self.tile:
                self.tile = min(self.tile, self.long_side)
                self.tile_overlap = min(self.tile_overlap, self.tile // 2)

    def input_scale(self, width: int, height: int) -> float:
        """Network pixels per image pixel for a ``width`` × ``height`` image: ``tile_scale`` when tiling, else the
        resize to ``long_side`` — what text heights are multiplied by before the network sees them."""
        return self.tile_scale if self.tile else self.long_side / max(width, height)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Detector:
        """A ``.onnx`` export through onnxruntime (no torch), anything else as a dbtk safetensors file."""
        if Path(path).suffix.lower() == ".onnx":
            return cls.from_onnx(path, device)
        return cls.from_checkpoint(path, device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Detector:
        """Load a dbtk weights file (``train`` checkpoint or ``export`` bundle): the recipe inside says the rest."""
        from dbtk.models.builder import load_model

        model, recipe = load_model(path)
        return cls.from_model(model, recipe, device)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, recipe: Recipe, device: str | torch.device = "cpu", *, borrowed: bool = False
    ) -> Detector:
        """A model in memory; ``borrowed`` for a training run's live model, which must not be changed (validation)."""
        from dbtk.infer.torch_runtime import TorchRuntime

        return cls(TorchRuntime(model, device, borrowed=borrowed), recipe)

    @classmethod
    def from_onnx(cls, path: str | Path, device: str = "auto") -> Detector:
        """An ONNX export run by onnxruntime with numpy and cv2 around it: torch is never imported."""
        from dbtk.infer.onnx_runtime import OnnxRuntime

        runtime = OnnxRuntime(path, device)
        return cls(runtime, runtime.recipe)

    def __call__(self, images: Iterable[Any] | Any, batch_size: int | None = None) -> list[Detections]:
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "convert"):
            images = [images]
        return self.detect_arrays([as_rgb_array(image) for image in images], batch_size)

    def stack(self, batch: Sequence[Prepared]) -> np.ndarray:
        """One uint8 N×H×W×3 array: images top-left aligned, zero-padded to the largest (or the fixed) size."""
        height, width = self.runtime.input_size or (
            max(p.tensor.shape[0] for p in batch),
            max(p.tensor.shape[1] for p in batch),
        )
        stacked = np.zeros((len(batch), height, width, 3), dtype=np.uint8)
        for i, prepared in enumerate(batch):
            h, w = prepared.tensor.shape[:2]
            stacked[i, :h, :w] = prepared.tensor
        return stacked

    def probability_maps(self, batch: Sequence[Prepared]) -> list[np.ndarray]:
        """Forward one batch and return each image's map, cropped to its resized size."""
        prob = self.runtime(self.stack(batch))
        return [prob[i, : p.tensor.shape[0], : p.tensor.shape[1]] for i, p in enumerate(batch)]

    def detect_arrays(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[Detections]:
        """Detections for each image, in order (batched as :meth:`detect_stream` batches)."""
        return [detections for _, _, detections in self.detect_stream(enumerate(images), batch_size)]

    def detect_stream(
        self, items: Iterable[tuple[K, np.ndarray]], batch_size: int | None = None
    ) -> Iterator[tuple[K, np.ndarray, Detections]]:
        """``(key, image)`` pairs in, ``(key, image, detections)`` out, in input order, at bounded memory.

        Images are read ahead :data:`WINDOW` batches at a time, or fewer when they reach :data:`READ_AHEAD_PIXELS`
        (at least one image); within that window, images whose resized size is equal go through the network
        together, ``batch_size`` at a time (default: the recipe's ``eval.batch_size``). Only equal sizes share a
        batch, so no image is padded by another and the results equal one-at-a-time inference. A static-shape
        export pads every image to its fixed input anyway.

        With ``eval.tile`` set, each image is detected from stitched tiles (:meth:`_tiled`), one image at a time,
        its tiles ``batch_size`` at a time.
        """
        batch_size = batch_size or self.batch_size
        if self.tile:
            for key, image in items:
                yield key, image, self._tiled(image, batch_size)
            return
        iterator = iter(items)
        while True:
            window = _read_ahead(iterator, batch_size * WINDOW, READ_AHEAD_PIXELS)
            if not window:
                return
            prepared = [resize_for_inference(image, self.long_side) for _, image in window]
            groups: dict[tuple[int, ...], list[int]] = {}
            for index, item in enumerate(prepared):
                key = (0,) if self.runtime.input_size is not None else item.tensor.shape[:2]
                groups.setdefault(key, []).append(index)
            found: dict[int, Detections] = {}
            for indices in groups.values():
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    batch = [prepared[i] for i in chunk]
                    for index, item, prob in zip(chunk, batch, self.probability_maps(batch), strict=True):
                        found[index] = boxes_from_map(prob, self.postprocess, item.scale, item.original)
            for index, (key, image) in enumerate(window):
                yield key, image, found[index]

    def _tiled(self, original: np.ndarray, batch_size: int) -> Detections:
        """Detections of one image from its stitched page map (:meth:`stitched_map`). Post-processing keeps up to
        ``max_candidates`` regions per tile, as the tiles would one by one: the cap is there against the specks of
        a noisy map, not against a large page with thousands of lines."""
        page, tiles = self.stitched_map(original, batch_size)
        height, width = page.shape
        scale, size = (original.shape[1] / width, original.shape[0] / height), (original.shape[1], original.shape[0])
        return boxes_from_map(page, self.postprocess, scale, size, self.postprocess.max_candidates * tiles)

    def stitched_map(self, original: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
        """The probability map of one image scaled by ``tile_scale``, stitched from its tiles; and the tile count.

        Each pixel is taken from the tile whose border is farthest from it — tiles answer up to the middle of
        their overlap — so it lies at least ``tile_overlap`` / 2 px inside that tile (except at the page's own
        edges). Near a tile's border the network lacks context: it answers low where a line is cut, and may answer
        high where the cut itself looks like text; taking the maximum of overlapping tiles kept those false
        answers (0.9515 against 0.9600 hmean on the docs-dev canvas, docs/benchmarks.md). Tiles of a side shorter
        than ``tile`` are zero-padded up to a multiple of :data:`STRIDE`, as :meth:`stack` pads a batch.
        """
        image = original
        if self.tile_scale != 1.0:
            import cv2

            interpolation = cv2.INTER_AREA if self.tile_scale < 1 else cv2.INTER_LINEAR
            size = tuple(max(1, round(side * self.tile_scale)) for side in (original.shape[1], original.shape[0]))
            image = cv2.resize(original, size, interpolation=interpolation)
        height, width = image.shape[:2]
        tile_h, tile_w = (min(self.tile, -(-side // STRIDE) * STRIDE) for side in (height, width))
        page = np.zeros((height, width), dtype=np.float32)
        windows = tile_windows(width, height, self.tile, self.tile_overlap)
        owned = [(x, y) for y in _owned(height, self.tile, self.tile_overlap) for x in _owned(width, self.tile, self.tile_overlap)]
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            batch = []
            for x0, y0, x1, y1 in chunk:
                tensor = np.zeros((tile_h, tile_w, 3), dtype=np.uint8)
                tensor[: y1 - y0, : x1 - x0] = image[y0:y1, x0:x1]
                batch.append(Prepared(tensor, (1.0, 1.0), (x1 - x0, y1 - y0)))
            for (x0, y0, _, _), ((ox0, ox1), (oy0, oy1)), prob in zip(chunk, owned[start : start + batch_size], self.probability_maps(batch), strict=True):
                page[oy0:oy1, ox0:ox1] = prob[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
        return page, len(windows)
