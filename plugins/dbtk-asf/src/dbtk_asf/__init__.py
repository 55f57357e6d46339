"""DBNet++ Adaptive Scale Fusion (ASF) decoder, registered in dbtk's ``dbtk.decoders`` group as ``asf``.

An FPN top-down pathway gives one map per scale; ASF then learns, for every pixel, how much each scale should
contribute: the concatenated levels go through a 3×3 convolution, an attention block produces one weight map
per level (channel attention over a pooled descriptor, then spatial attention over the channel mean), and each
level is scaled by its weights before the final concatenation. Only the attention is new relative to dbtk's FPN,
which it extends; the output contract (``out_channels`` channels at the finest stride) is the same, so it drops into
any recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dbtk.models.decoders import FPN, conv_bn_relu

__all__ = ["ASF", "ScaleAttention"]
__version__ = "0.1.0"

#: dbtk plugin API versions this package implements (checked by dbtk before use).
DBTK_API_VERSIONS = (1, 1)


class ScaleAttention(nn.Module):
    """Per-level, per-pixel fusion weights from the concatenated levels (DBNet++ section 3.2).

    ``channel_attention`` adds the squeeze-excitation-style branch of the "scale_channel_spatial" variant; without
    it this is the "scale_spatial" variant. Sigmoids keep every weight in (0, 1) and finite in any precision.
    """

    def __init__(self, channels: int, levels: int, channel_attention: bool = True) -> None:
        super().__init__()
        self.channel = (
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(channels, max(channels // 4, 1), 1, bias=False),
                nn.ReLU(inplace=True),
                nn.Conv2d(max(channels // 4, 1), channels, 1, bias=False),
                nn.Sigmoid(),
            )
            if channel_attention
            else None
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(1, 1, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(1, 1, 1, bias=False),
            nn.Sigmoid(),
        )
        self.to_levels = nn.Sequential(nn.Conv2d(channels, levels, 1, bias=False), nn.Sigmoid())

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            fused = fused + self.channel(fused)
        fused = fused + self.spatial(fused.mean(dim=1, keepdim=True))
        return self.to_levels(fused)  # N × levels × H × W


class ASF(FPN):
    """FPN neck with Adaptive Scale Fusion.

    Built on dbtk's FPN (its lateral, top-down and smoothing layers, via ``FPN.scales``) and dbtk's
    ``conv_bn_relu`` (the 3×3 block before the attention); only the fusion differs.
    ``in_channels`` (given by dbtk): encoder channels per level, finest first. ``channels``: output channels; each
    level contributes ``channels // levels`` of them. ``attention``: ``"scale_channel_spatial"`` (the paper's best)
    or ``"scale_spatial"``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 256, attention: str = "scale_channel_spatial") -> None:
        if attention not in ("scale_channel_spatial", "scale_spatial"):
            raise ValueError(f"attention must be 'scale_channel_spatial' or 'scale_spatial', got '{attention}'")
        super().__init__(in_channels, channels)
        self.pre_attention = conv_bn_relu(channels, channels, kernel_size=3)
        self.attention = ScaleAttention(channels, len(in_channels), channel_attention=attention == "scale_channel_spatial")

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = self.scales(features)
        weights = self.attention(self.pre_attention(torch.cat(levels, dim=1)))
        weighted = [level * weights[:, i : i + 1] for i, level in enumerate(levels)]
        return self.fuse(torch.cat(weighted, dim=1))
