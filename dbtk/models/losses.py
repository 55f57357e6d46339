"""Losses. The built-in ``db`` loss: balanced BCE with hard negatives + dice + masked L1, always in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DBLoss(nn.Module):
    """DBNet loss: ``prob_weight·BCE_ohem(P) + binary_weight·dice(B) + thresh_weight·L1(T)``.

    - BCE on the probability *logits* (stable for any logit) with hard-negative mining: all positives plus the
      ``negative_ratio × positives`` highest-loss negatives of the batch. At least ``min_negatives`` negatives are
      always kept, so a batch without text still teaches the model to predict nothing.
    - Dice on the approximate binary map, masked by the shrink mask.
    - L1 on the threshold map inside the dilated text region (``thresh_mask``).

    Targets are the batch keys ``shrink_map``, ``shrink_mask``, ``thresh_map`` and ``thresh_mask`` (see
    :mod:`dbtk.data.targets`). Everything runs in float32 with autocast off, and the mining uses a sort plus a rank mask instead of
    ``topk(int(k))``, so the loss needs no host synchronisation. Returns tensors only.
    """

    def __init__(
        self,
        negative_ratio: float = 3.0,
        prob_weight: float = 5.0,
        binary_weight: float = 1.0,
        thresh_weight: float = 10.0,
        min_negatives: int = 100,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.negative_ratio = negative_ratio
        self.prob_weight = prob_weight
        self.binary_weight = binary_weight
        self.thresh_weight = thresh_weight
        self.min_negatives = min_negatives
        self.eps = eps

    def forward(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device_type = outputs["logits"].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            logits = outputs["logits"].float().squeeze(1)
            gt = targets["shrink_map"].float()
            mask = targets["shrink_mask"].float()
            prob_loss = self.balanced_bce(logits, gt, mask)
            total = self.prob_weight * prob_loss
            parts = {"prob": prob_loss}
            if "binary" in outputs:
                binary_loss = self.dice(outputs["binary"].float().squeeze(1), gt, mask)
                thresh_loss = self.masked_l1(
                    outputs["thresh"].float().squeeze(1), targets["thresh_map"].float(), targets["thresh_mask"].float()
                )
                total = total + self.binary_weight * binary_loss + self.thresh_weight * thresh_loss
                parts.update(binary=binary_loss, thresh=thresh_loss)
        return {"loss": total, **parts}

    def balanced_bce(self, logits: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positive = gt * mask
        negative = (1.0 - gt) * mask
        positive_count = positive.sum()
        negative_total = negative.sum()
        negative_count = torch.minimum(negative_total, positive_count * self.negative_ratio)
        negative_count = torch.maximum(negative_count, torch.clamp(negative_total, max=float(self.min_negatives)))
        loss = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
        positive_loss = (loss * positive).sum()
        negative_loss = (loss * negative).flatten()
        ranked, _ = torch.sort(negative_loss, descending=True)
        keep = torch.arange(ranked.numel(), device=ranked.device) < negative_count
        hard_negative_loss = (ranked * keep).sum()
        return (positive_loss + hard_negative_loss) / (positive_count + negative_count + self.eps)

    def dice(self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        intersection = (pred * gt * mask).sum()
        union = (pred * mask).sum() + (gt * mask).sum() + self.eps
        return 1.0 - 2.0 * intersection / union

    def masked_l1(self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ((pred - gt).abs() * mask).sum() / (mask.sum() + self.eps)
