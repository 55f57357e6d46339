"""``Detector``: a model loaded once, then called on images — the one inference path.

Validation during training, ``dbtk eval``, ``dbtk predict`` and exported models all go through
:meth:`Detector.detect_arrays`, so they resize, batch and post-process identically. Nothing is written to disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dbtk.infer.postprocess import Detections, boxes_from_map

if TYPE_CHECKING:
    from dbtk.recipe import Recipe

#: Input sides must be multiples of the encoder's coarsest stride.
STRIDE = 32


@dataclass(frozen=True)
class Prepared:
    """One image resized for the network, and how to map its outputs back."""

    tensor: np.ndarray  # h × w × 3 uint8, resized (not padded)
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


class Detector:
    """A DBNet detector ready for inference: ``detector(images) -> list[Detections]``."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe, device: str | torch.device = "cpu") -> None:
        from dbtk.engine.device import resolve_device

        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.recipe = recipe
        self.postprocess = recipe.postprocess
        self.long_side = recipe.eval.long_side
        self.batch_size = recipe.eval.batch_size

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Detector:
        """Load a dbtk weights file (``train`` checkpoint or ``export`` bundle): the recipe inside says the rest."""
        from dbtk.engine.checkpoint import load_model

        model, recipe = load_model(path)
        return cls(model, recipe, device)

    def __call__(self, images: Iterable[Any] | Any, batch_size: int | None = None) -> list[Detections]:
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "convert"):
            images = [images]
        return self.detect_arrays([as_rgb_array(image) for image in images], batch_size)

    @torch.inference_mode()
    def probability_maps(self, batch: Sequence[Prepared]) -> list[np.ndarray]:
        """Forward one batch (padded to a common size) and return each image's map, cropped to its size."""
        height = max(p.tensor.shape[0] for p in batch)
        width = max(p.tensor.shape[1] for p in batch)
        stacked = np.zeros((len(batch), height, width, 3), dtype=np.uint8)
        for i, prepared in enumerate(batch):
            h, w = prepared.tensor.shape[:2]
            stacked[i, :h, :w] = prepared.tensor
        images = torch.from_numpy(stacked).to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC strides
        prob = self.model(images, return_all=False)["prob"][:, 0].float().cpu().numpy()
        return [prob[i, : p.tensor.shape[0], : p.tensor.shape[1]] for i, p in enumerate(batch)]

    def detect_arrays(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[Detections]:
        batch_size = batch_size or self.batch_size
        results: list[Detections] = []
        for start in range(0, len(images), batch_size):
            batch = [resize_for_inference(image, self.long_side) for image in images[start : start + batch_size]]
            for prepared, prob in zip(batch, self.probability_maps(batch), strict=True):
                results.append(boxes_from_map(prob, self.postprocess, prepared.scale, prepared.original))
        return results
