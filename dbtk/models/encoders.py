"""Encoders: multi-scale feature extractors. The built-in ``timm`` encoder wraps any timm architecture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dbtk.errors import DbtkError

#: Strides the DB decoder and head expect, finest first: the head upsamples the stride-4 map by 4.
DB_STRIDES = (4, 8, 16, 32)


class TimmEncoder(nn.Module):
    """Any timm model with ``features_only=True``; exposes ``channels`` and ``strides`` for the decoder.

    ``pretrained`` is false; true (timm's default published weights for ``arch``); a timm pretrained tag
    (``"resnet18.a1_in1k"``), loaded from the Hugging Face hub cache and downloaded into it only when missing and
    online (:mod:`dbtk.models.weights`); or a path to a local weights file (safetensors, or a timm/torch checkpoint
    loaded with ``weights_only=True``). ``out_indices`` defaults to the deepest feature at each of the strides 4,
    8, 16 and 32, which works for ResNets, MobileNets, EfficientNets and ConvNeXts alike.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        pretrained: bool | str = False,
        out_indices: Sequence[int] | None = None,
        frozen_bn: bool = False,
        freeze_stages: int = 0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        import timm

        from dbtk.models import weights

        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        try:
            source = weights.pretrained_source(arch, pretrained)
            if isinstance(source, weights.HubWeights):  # timm loads them, as timm.create_model(pretrained=True) would
                self.body = weights.create_features(source.tag, weights.locate(source), **kwargs)
            elif isinstance(source, Path):  # checked like hub weights: another architecture's file is refused
                self.body = weights.features_from_file(arch, source, **kwargs)
            else:
                self.body = timm.create_model(arch, pretrained=False, features_only=True, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" not in str(exc):
                raise
            from dbtk.errors import did_you_mean

            raise DbtkError(
                f"unknown timm architecture '{arch}'{did_you_mean(arch, timm.list_models())}",
                hint="list them with: python -c \"import timm; print(timm.list_models('resnet*'))\"",
            ) from None
        reductions = list(self.body.feature_info.reduction())
        if out_indices is None:
            out_indices = _indices_for_strides(reductions, DB_STRIDES, arch)
        self.out_indices = tuple(int(i) for i in out_indices)
        all_channels = self.body.feature_info.channels()
        if any(i < 0 or i >= len(reductions) for i in self.out_indices):
            raise DbtkError(f"out_indices {list(self.out_indices)} out of range for '{arch}' ({len(reductions)} feature levels)")
        self.channels = [all_channels[i] for i in self.out_indices]
        self.strides = [reductions[i] for i in self.out_indices]
        if frozen_bn:
            from timm.layers import freeze_batch_norm_2d

            self.body = freeze_batch_norm_2d(self.body)
        if freeze_stages:
            self._freeze(freeze_stages)

    def _freeze(self, stages: int) -> None:
        """Freeze the stem and the first ``stages`` selected levels (fine-tuning on little data)."""
        if not 0 < stages <= len(self.out_indices):
            raise DbtkError(f"freeze_stages must be between 0 and {len(self.out_indices)}, got {stages}")
        last = self.body.feature_info.module_name()[self.out_indices[stages - 1]].split(".")[0]
        for name, child in self.body.named_children():
            child.requires_grad_(False)
            if name == last:
                return

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(images)
        return [features[i] for i in self.out_indices]


def _indices_for_strides(reductions: list[int], strides: Sequence[int], arch: str) -> list[int]:
    indices = []
    for stride in strides:
        matches = [i for i, r in enumerate(reductions) if r == stride]
        if not matches:
            raise DbtkError(
                f"timm architecture '{arch}' has no stride-{stride} feature (strides: {reductions})",
                hint="set out_indices explicitly to four levels at strides 4, 8, 16, 32",
            )
        indices.append(matches[-1])
    return indices
