"""``dbtk export``: self-describing deployment files, and the check that they detect what the checkpoint does.

Both formats carry the resolved recipe (model components, inference size, post-processing thresholds), the
input convention and the normalisation, so a service needs the file and nothing else:

- **safetensors bundle**: weights only (no optimizer state), loadable by ``Detector.from_checkpoint``;
- **ONNX**: input ``images`` uint8 RGB N×3×H×W (normalisation inside the graph), output ``prob`` float32
  N×1×H×W; batch, height and width dynamic (multiples of 32) or fixed for runtimes that want static shapes;
  run by ``Detector.from_onnx`` with onnxruntime, numpy and cv2 only. The graph computes in fp32, in fp16
  (GPU serving; the I/O stays uint8 in, float32 out) or in INT8 (onnxruntime static quantization for CPUs,
  calibrated on the user's images); the file's ``precision`` metadata says which.

A quantized export cannot be checked against the checkpoint map for map: its maps differ by design. What matters is
whether it still finds the text, so :func:`score` runs both on a labelled split and compares hmean and latency.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from dbtk.infer.evaluate import evaluate_detector
from dbtk.infer.onnx_runtime import FORMAT, FORMAT_KEY, PRECISION_KEY, PRECISIONS, require
from dbtk.infer.postprocess import Detections, boxes_from_map
from dbtk.models.builder import IMAGE_MEAN, IMAGE_STD

if TYPE_CHECKING:
    from dbtk.data.reader import Reader

INPUT_CONVENTION = "images: uint8 RGB, N x 3 x H x W, H and W multiples of 32, values 0-255 (normalised inside the model)"
DEFAULT_OPSET = 17
#: Operators INT8 quantization leaves in float (measured on docs-dev: docs/benchmarks.md): the decoder's lone
#: BatchNorm after the concat, whose rank-1 weights have no per-channel form (asked to, onnxruntime's quantizer warns
#: that the channel axis is out of range), and the final sigmoid, whose output is the probability map: in 8 bits it comes
#: in steps of 1/255 and detection scores with it. Both cost no measurable time. Quantizing the head's upsampling
#: (ConvTranspose) and the decoder's resizes too lost no hmean there, so they run in INT8.
INT8_FLOAT_OPS = ("BatchNormalization", "Sigmoid")


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
    precision: str = "fp32",
    calibration: Sequence[np.ndarray] = (),
) -> recipes.Recipe:
    """Trace the model to ONNX with the recipe in ``metadata_props``; static exports fix batch × size × size.

    ``precision`` ``fp16`` converts the graph to float16 (inputs and outputs kept); ``int8`` quantizes it,
    calibrated on ``calibration`` (RGB uint8 images, resized as inference resizes them).
    """
    onnx = require("onnx")
    if precision not in PRECISIONS:
        raise DbtkError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "int8" and not calibration:
        raise DbtkError("INT8 quantization needs calibration images", hint="pass a folder of your own images with --calibrate")
    if precision != "fp32":
        require("onnxruntime")  # the converter (fp16) and the quantizer (int8) ship with it
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
    metadata = {FORMAT_KEY: FORMAT, "recipe": recipes.dumps(recipe), **describe(recipe), PRECISION_KEY: precision}
    if precision == "fp16":
        proto = to_fp16(proto)
    elif precision == "int8":
        fixed = None if dynamic else (batch, side)
        proto, settings = quantize_int8(proto, calibration_batches(calibration, side, fixed))
        metadata["quantization"] = json.dumps(settings)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    atomic_write(out, lambda tmp: onnx.save(proto, tmp))
    return recipe


def to_fp16(proto: Any) -> Any:
    """The graph in float16, its input (uint8) and output (float32) kept, so a service feeds and reads it exactly as
    an fp32 export; onnxruntime's own converter, which keeps the operators that have no float16 form in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=True)


def calibration_batches(images: Sequence[np.ndarray], side: int, fixed: tuple[int, int] | None) -> list[np.ndarray]:
    """uint8 N×3×H×W batches as inference feeds them: each image resized to long side ``side``, one per batch;
    for a static export, ``fixed`` = (batch, size) images zero-padded into batch × 3 × size × size."""
    resized = [resize_for_inference(image, side).tensor for image in images]
    if fixed is None:
        return [np.ascontiguousarray(image.transpose(2, 0, 1)[None]) for image in resized]
    count, size = fixed
    batches = []
    for start in range(0, len(resized), count):
        batch = np.zeros((count, 3, size, size), dtype=np.uint8)
        for i, image in enumerate(resized[start : start + count]):
            h, w = image.shape[:2]
            batch[i, :, :h, :w] = image.transpose(2, 0, 1)
        batches.append(batch)
    return batches


def quantize_int8(proto: Any, batches: Sequence[np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """onnxruntime static quantization: QDQ format (what its CPU kernels fuse), uint8 activations with ranges
    calibrated (min/max) on ``batches``, int8 weights per output channel, :data:`INT8_FLOAT_OPS` left in float.

    The graph first goes through onnxruntime's pre-processing (shape inference, fusions), as its docs ask. The
    min/max calibrator keeps two numbers per tensor and batch, so full pages calibrate in little memory. Returns the
    quantized graph and the settings recorded in its metadata.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.pending = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.pending, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory() as folder:
        fp32, prepared, quantized = (str(Path(folder) / name) for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(proto, fp32)
        quant_pre_process(fp32, prepared)
        keep_float = [node.name for node in onnx.load(prepared).graph.node if node.op_type in INT8_FLOAT_OPS]
        quantize_static(
            prepared, quantized, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
        )
        result = onnx.load(quantized)
    settings = {"format": "QDQ", "activations": "uint8", "weights": "int8 per channel", "calibration": "minmax",
                "calibration_batches": len(batches), "float_ops": list(INT8_FLOAT_OPS)}
    return result, settings


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
    max_box_shift: float  # original pixels from a box to the nearest box of the other model (marginal boxes aside)


def compare(
    reference: Detector, exported: Detector, images: Sequence[tuple[str, np.ndarray]], score_margin: float = 0.0
) -> list[Comparison]:
    """Feed both detectors the exact same padded uint8 batch; compare maps and the boxes post-processed from them.

    Boxes whose score is within ``score_margin`` of ``postprocess.box_thresh`` are marginal: a map that moved a
    little may keep or drop them, so they are left out of ``max_box_shift``.
    """
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
                max_box_shift=_box_shift(*boxes, exported.postprocess.box_thresh, score_margin),
            )
        )
    return results


def _same_boxes(a: Detections, b: Detections) -> bool:
    return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons, strict=True))


def _box_shift(a: Detections, b: Detections, box_thresh: float, margin: float) -> float:
    """How far the boxes moved: each box's Hausdorff distance to the nearest box of the other set, the worst over
    both sets, leaving out boxes scored within ``margin`` of ``box_thresh``; infinite when a box that counts has
    no counterpart at all. Nearest, not paired in order: a small change of the map can reorder the contours
    post-processing lists. Hausdorff, not corner to corner: the minimum-area rectangle of a near-square blob may
    turn by many degrees (its corners far apart) while the region it covers hardly moves."""
    import shapely

    worst = 0.0
    for mine, theirs in ((a, b), (b, a)):
        counted = [p for p, score in zip(mine.polygons, mine.scores, strict=True) if abs(score - box_thresh) > margin]
        if counted and not len(theirs):
            return float("inf")
        if counted:
            distances = shapely.hausdorff_distance(
                shapely.polygons([p.astype(np.float64) for p in counted])[:, None],
                shapely.polygons([p.astype(np.float64) for p in theirs.polygons])[None, :],
            )
            worst = max(worst, float(distances.min(axis=1).max()))
    return worst


# ------------------------------------------------------------------------------------------------ scored on a split
@dataclass(frozen=True)
class Score:
    """A model's ICDAR2015 result on a labelled split, and the time its network took per image."""

    precision: float
    recall: float
    hmean: float
    images: int
    ms_per_image: float


class _Timed:
    """A runtime that adds up its network time. Resizing, post-processing and reading images are the same work
    for the checkpoint and the export, so the latency the check reports leaves them out."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.input_size = runtime.input_size
        self.seconds = 0.0
        self.images = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        prob = self.runtime(batch)
        self.seconds += time.perf_counter() - start
        self.images += len(batch)
        return prob


def score(detector: Detector, reader: Reader, on_image: Any = None) -> Score:
    """Run ``detector`` over a labelled split as ``dbtk eval`` does, timing its network (after one warm-up call,
    which pays for allocations and, in onnxruntime, graph preparation)."""
    warm_up = np.zeros((1, *(detector.runtime.input_size or (64, 64)), 3), dtype=np.uint8)
    detector.runtime(warm_up)
    timed = _Timed(detector.runtime)
    result = evaluate_detector(Detector(timed, detector.recipe), reader, on_image)
    summary = result.summary
    ms = 1e3 * timed.seconds / timed.images if timed.images else 0.0
    return Score(summary.precision, summary.recall, summary.hmean, summary.images, ms)
