"""Decoders (necks): fuse an encoder's multi-scale features into one map at the finest stride."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """A same-size convolution, BatchNorm, ReLU block, public so decoder plugins (``dbtk-asf``) build their
    layers from dbtk's API instead of keeping copies. The convolution has no bias: BatchNorm's shift replaces it.
    Keep the children as they are (``0`` conv, ``1`` BatchNorm, ``2`` ReLU): they name the state-dict keys that
    trained checkpoints of those plugins hold."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FPN(nn.Module):
    """The DBNet UNet/FPN neck: lateral 1×1, top-down upsample-add, 3×3 smooth, concat at the finest level.

    Works with any number of levels and any channel list; each level contributes ``channels // levels`` channels
    to the concatenation, so the output has ``channels`` channels at the finest input stride.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        levels = len(in_channels)
        if channels % levels:
            raise ValueError(f"channels ({channels}) must be divisible by the number of levels ({levels})")
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1, bias=False) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Conv2d(channels, channels // levels, 3, padding=1, bias=False) for _ in in_channels
        )
        self.out_channels = channels
        self.fuse = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat(self.scales(features), dim=1))

    def scales(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The top-down pathway: one ``channels // levels`` map per level, all at the finest stride.

        Public so decoders that only change how the levels are combined (DBNet++'s ASF) can build on it.
        """
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse to fine
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        size = laterals[0].shape[-2:]
        return [
            F.interpolate(conv(lat), size=size, mode="nearest") if i else conv(lat)
            for i, (conv, lat) in enumerate(zip(self.smooth, laterals, strict=True))
        ]
