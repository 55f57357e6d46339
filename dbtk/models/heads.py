"""Heads: turn the fused feature map into full-resolution DB maps."""

from __future__ import annotations

import torch
from torch import nn


def _branch(in_channels: int, bias_init: float) -> nn.Sequential:
    mid = max(in_channels // 4, 1)
    branch = nn.Sequential(
        nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, mid, 2, stride=2),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, 1, 2, stride=2),
    )
    nn.init.constant_(branch[-1].bias, bias_init)
    return branch


class DBHead(nn.Module):
    """Differentiable Binarization head.

    Returns ``logits`` (probability-map logits) and ``prob``; with ``return_all`` (default: in training) also the
    threshold map ``thresh`` and the approximate binary map ``binary = sigmoid(k * (prob - thresh))``, computed in
    float32. The sigmoid form is what keeps it finite: ``1 / (1 + exp(-k(x - y)))`` overflows for large k·(x − y).
    At inference the threshold branch is skipped entirely.
    """

    def __init__(self, in_channels: int, k: float = 50.0, prior_prob: float = 0.01) -> None:
        super().__init__()
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        self.k = float(k)
        # Text covers a few percent of a page: starting the logits at the prior keeps early BCE small and stable.
        prior_logit = float(torch.logit(torch.tensor(prior_prob)))
        self.prob_branch = _branch(in_channels, prior_logit)
        self.thresh_branch = _branch(in_channels, 0.0)

    def forward(self, features: torch.Tensor, return_all: bool | None = None) -> dict[str, torch.Tensor]:
        logits = self.prob_branch(features)
        out = {"logits": logits, "prob": torch.sigmoid(logits)}
        if self.training if return_all is None else return_all:
            thresh = torch.sigmoid(self.thresh_branch(features).float())
            out["thresh"] = thresh
            out["binary"] = torch.sigmoid(self.k * (out["prob"].float() - thresh))
        return out
