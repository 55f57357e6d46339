"""``dbtk export``: self-describing deployment files, and the check that they detect what the checkpoint does.

Both formats carry the resolved recipe (model components, inference size, post-processing thresholds), the
input convention and the normalisation, so a service needs the file and nothing else:

- **safetensors bundle**: weights only (no optimizer state), loadable by ``Detector.from_checkpoint``;
- **ONNX**: input ``images`` uint8 RGB N×3×H×W (normalisation inside the graph), output ``prob`` float32
  N×1×H×W; batch, height and width dynamic (multiples of 32) or fixed for runtimes that want static shapes;
  run by ``Detector.from_onnx`` with onnxruntime, numpy and cv2 only.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dbtk
from dbtk import recipe as recipes
from dbtk.io.atomic import atomic_write
from dbtk.io.checkpoint import save_weights, without_pretrained
from dbtk.models.builder import load_model
from dbtk.errors import DbtkError
from dbtk.infer.detector import Detector, resize_for_inference
from dbtk.infer.onnx_runtime import FORMAT, FORMAT_KEY, require
from dbtk.infer.postprocess import Detections, boxes_from_map
from dbtk.models.builder import IMAGE_MEAN, IMAGE_STD

INPUT_CONVENTION = "images: uint8 RGB, N x 3 x H x W, H and W multiples of 32, values 0-255 (normalised inside the model)"
DEFAULT_OPSET = 17


def describe(recipe: recipes.Recipe) -> dict[str, str]:
    """Metadata both formats carry besides the recipe: what a service needs without reading dbtk's docs."""
    return {
        "dbtk_version": dbtk.__version__,
        "input": INPUT_CONVENTION,
        "output": "prob: float32, N x 1 x H x W, text probability per pixel",
        "normalisation": json.dumps({"mean": IMAGE_MEAN, "std": IMAGE_STD}),
        "long_side": str(recipe.eval.long_side),
        "postprocess": json.dumps(recipes.unstructure(recipe)["postprocess"]),
    }


def export_bundle(checkpoint: str | Path, out: str | Path) -> recipes.Recipe:
    """Weights and recipe of ``checkpoint`` without training state, written atomically to ``out``."""
    model, recipe = load_model(checkpoint)
    recipe = without_pretrained(recipe)
    save_weights(out, model, recipe, extra_metadata={"kind": "bundle", **describe(recipe)})
    return recipe


class ProbabilityMap(nn.Module):
    """The exported graph: images in, probability map out (the threshold branch is training-only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, return_all=False)["prob"]


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    size: int | None = None,
    batch: int = 1,
) -> recipes.Recipe:
    """Trace the model to ONNX with the recipe in ``metadata_props``; static exports fix batch × size × size."""
    onnx = require("onnx")
    model, recipe = load_model(checkpoint)
    recipe = without_pretrained(recipe)
    side = size or recipe.eval.long_side
    if side % 32:
        raise DbtkError(f"--size must be a multiple of 32, got {side}")
    graph = ProbabilityMap(model).eval()
    # A dynamic export is traced on a small non-square batch of 2 so no axis can be mistaken for a constant.
    sample = torch.zeros((2, 3, 64, 96) if dynamic else (batch, 3, side, side), dtype=torch.uint8)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "prob": {0: "batch", 2: "height", 3: "width"}}
    buffer = io.BytesIO()
    with _quiet_tracing():
        torch.onnx.export(
            graph, (sample,), buffer, input_names=["images"], output_names=["prob"], opset_version=opset,
            dynamic_axes=axes if dynamic else None, do_constant_folding=True, **_legacy_exporter(),
        )
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {FORMAT_KEY: FORMAT, "recipe": recipes.dumps(recipe), **describe(recipe)}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    atomic_write(out, lambda tmp: onnx.save(proto, tmp))
    return recipe


def _legacy_exporter() -> dict[str, bool]:
    """The TorchScript exporter: no extra dependency (the dynamo one needs onnxscript) and the same graph on
    every torch since 2.2. Newer torch defaults to dynamo, so ask for it explicitly where the switch exists."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """The tracer warns about the output-resize branch, which is constant for inputs that are multiples of
    32 (the documented input contract), and torch announces the exporter's deprecation: noise to users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------------------------------------ checks
@dataclass(frozen=True)
class Comparison:
    """One image run through the reference (checkpoint) and the exported model on the same input array."""

    image: str
    input_size: tuple[int, int]  # (height, width) fed to both
    max_abs_diff: float
    reference_boxes: int
    export_boxes: int
    boxes_identical: bool


def compare(reference: Detector, exported: Detector, images: Sequence[tuple[str, np.ndarray]]) -> list[Comparison]:
    """Feed both detectors the exact same padded uint8 batch; compare maps and the boxes post-processed from them."""
    results = []
    for name, image in images:
        prepared = resize_for_inference(image, exported.long_side)
        stacked = exported.stack([prepared])
        h, w = prepared.tensor.shape[:2]
        maps = [reference.runtime(stacked)[0, :h, :w], exported.runtime(stacked)[0, :h, :w]]
        boxes = [boxes_from_map(m, exported.postprocess, prepared.scale, prepared.original) for m in maps]
        results.append(
            Comparison(
                image=name,
                input_size=stacked.shape[1:3],
                max_abs_diff=float(np.abs(maps[0] - maps[1]).max()),
                reference_boxes=len(boxes[0]),
                export_boxes=len(boxes[1]),
                boxes_identical=_same_boxes(*boxes),
            )
        )
    return results


def _same_boxes(a: Detections, b: Detections) -> bool:
    return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons, strict=True))
