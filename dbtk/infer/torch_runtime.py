"""The torch runtime behind :class:`dbtk.infer.detector.Detector`: a model on a device, in inference mode."""

from __future__ import annotations

import numpy as np
import torch

#: On a CPU, the most pixels one forward takes: a batch above it runs as consecutive forwards of at most this many
#: pixels (at least one image each). Batching pays on a CPU only while activations stay small — measured with
#: benchmarks/batching.py on the docs model (2 cores, docs/benchmarks.md): 4 images of 256² together cost 0.85× one
#: at a time, of 512² 1.6×, of 1280² 1.2×. GPUs batch without a cap (their limit is memory, not cache).
CPU_PIXELS_PER_FORWARD = 4 * 256 * 256


class TorchRuntime:
    """Runs a DBNet on uint8 NHWC batches; channels-last so the permuted batch needs no copy."""

    input_size = None  # any multiple of 32

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", *, borrowed: bool = False) -> None:
        """``borrowed``: the model belongs to a training run (validation). It is used as it is — no device move, no
        layout change — because converting the live model to channels-last would leave the optimizer's moments
        in the old layout (the fused CUDA optimizer refuses it; on CPU the moments are silently scrambled)."""
        from dbtk.io.device import resolve_device

        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.eval() if borrowed else model.to(self.device).eval().to(memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.device.type != "cpu" or len(batch) == 1:
            return self._forward(batch)
        per_forward = max(1, CPU_PIXELS_PER_FORWARD // (batch.shape[1] * batch.shape[2]))
        if per_forward >= len(batch):
            return self._forward(batch)
        return np.concatenate([self._forward(batch[i : i + per_forward]) for i in range(0, len(batch), per_forward)])

    @torch.inference_mode()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(batch).to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC strides
        return self.model(images, return_all=False)["prob"][:, 0].float().cpu().numpy()
