"""The torch runtime behind :class:`dbtk.infer.detector.Detector`: a model on a device, in inference mode."""

from __future__ import annotations

import numpy as np
import torch


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

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(batch).to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC strides
        return self.model(images, return_all=False)["prob"][:, 0].float().cpu().numpy()
