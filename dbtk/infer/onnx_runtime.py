"""The onnxruntime runtime behind :class:`dbtk.infer.detector.Detector`: numpy in, numpy out, no torch.

An ONNX file written by ``dbtk export`` carries the resolved recipe in its metadata, so post-processing and
resizing settings travel with the graph. Its input is ``images``: uint8 RGB N×3×H×W (normalisation is inside the
graph); its output ``prob``: float32 N×1×H×W — whatever precision the graph computes in (``precision`` metadata:
fp32, fp16 or int8; files written before it existed are fp32).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.recipe import Recipe

#: metadata_props keys written by ``dbtk export --format onnx``.
FORMAT_KEY, FORMAT = "dbtk_format", "dbtk-onnx-1"
PRECISION_KEY = "precision"
#: What an export's graph computes in: ``dbtk export --precision fp16`` or ``--quantize int8`` (fp32 otherwise).
PRECISIONS = ("fp32", "fp16", "int8")


def require(module: str) -> Any:
    """Import onnx or onnxruntime, or say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DbtkError(
            f"{module} is not installed; ONNX export and ONNX inference need it",
            hint='pip install "dbtk[onnx]"',
        ) from None


def providers_for(device: str, available: list[str]) -> list[str]:
    """onnxruntime execution providers for a dbtk device name (``auto`` takes CUDA when onnxruntime has it)."""
    if device in ("auto", "cuda") or device.startswith("cuda:"):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if device != "auto":
            raise DbtkError(
                f"device '{device}' asked for, but this onnxruntime has no CUDA provider (has: {', '.join(available)})",
                hint="pip install onnxruntime-gpu, or use --device cpu",
            )
    elif device != "cpu":
        raise DbtkError(f"ONNX inference runs on 'cpu', 'cuda' or 'auto', not '{device}'")
    return ["CPUExecutionProvider"]


class OnnxRuntime:
    """An onnxruntime session over a dbtk ONNX export; fixed batch or size (static exports) handled here."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        from dbtk import recipe as recipes

        ort = require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise DbtkError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are noise to users
        providers = providers_for(device, ort.get_available_providers())  # a device problem is not the file's
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise DbtkError(f"{path} is not a loadable ONNX model ({type(exc).__name__}: {exc})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if metadata.get(FORMAT_KEY) != FORMAT or "recipe" not in metadata:
            raise DbtkError(f"{path} has no dbtk metadata", hint="export it with: dbtk export CHECKPOINT --format onnx")
        self.recipe: Recipe = recipes.loads(metadata["recipe"], source=f"{path} (embedded recipe)")
        self.metadata = dict(metadata)
        self.precision = metadata.get(PRECISION_KEY, "fp32")
        batch, _, height, width = self.session.get_inputs()[0].shape
        self.batch = batch if isinstance(batch, int) else None
        self.input_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        if self.batch is None or len(images) == self.batch:
            return self.session.run(["prob"], {"images": images})[0][:, 0]
        chunks = []
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            padded = np.zeros((self.batch, *chunk.shape[1:]), dtype=np.uint8)
            padded[: len(chunk)] = chunk
            chunks.append(self.session.run(["prob"], {"images": padded})[0][: len(chunk), 0])
        return np.concatenate(chunks)
