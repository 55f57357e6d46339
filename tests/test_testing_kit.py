"""dbtk.testing (the plugin kit): built-ins pass, deliberately wrong components fail with a precise message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dbtk.loggers.jsonl import JsonlLogger
from dbtk.models.decoders import FPN
from dbtk.models.encoders import TimmEncoder
from dbtk.models.heads import DBHead
from dbtk.models.losses import DBLoss
from dbtk.testing import PluginContractError, check_decoder, check_encoder, check_head, check_logger, check_loss, no_host_sync


def test_builtins_pass(tmp_path: Path) -> None:
    check_encoder(TimmEncoder, arch="resnet18")
    check_decoder(FPN, channels=64)
    check_head(DBHead, k=50)
    check_loss(DBLoss)
    check_logger(JsonlLogger, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 6


# ------------------------------------------------------------------------------------------------ decoders
class WrongChannels(FPN):
    def __init__(self, in_channels: list[int], channels: int = 64) -> None:
        super().__init__(in_channels, channels)
        self.out_channels = channels * 2


class IgnoresCoarseLevel(FPN):
    def forward(self, features):  # noqa: ANN001, ANN201
        return super().forward([*features[:-1], torch.zeros_like(features[-1])])


class SyncsOnHost(FPN):
    def forward(self, features):  # noqa: ANN001, ANN201
        out = super().forward(features)
        return out / max(out.abs().max().item(), 1.0)


class UnusedParameter(FPN):
    def __init__(self, in_channels: list[int], channels: int = 64) -> None:
        super().__init__(in_channels, channels)
        self.spare = nn.Conv2d(channels, channels, 1)


class NoOutChannels(nn.Module):
    def __init__(self, in_channels: list[int]) -> None:
        super().__init__()

    def forward(self, features):  # noqa: ANN001, ANN201
        return features[0]


class PathDefault(FPN):
    def __init__(self, in_channels: list[int], channels: int = 64, cache: Path = Path("/tmp")) -> None:
        super().__init__(in_channels, channels)


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (WrongChannels, {}, r"must return one tensor of shape \(2, 128, 24, 40\)"),
        (IgnoresCoarseLevel, {}, "ignores encoder level 3"),
        (SyncsOnHost, {}, r"Tensor.item\(\) inside the training step"),
        (UnusedParameter, {}, "parameter 'spare.weight' receives no gradient"),
        (NoOutChannels, {}, "must set an integer 'out_channels'"),
        (FPN, {"chanels": 64}, r"unknown parameter 'chanels' .*did you mean 'channels'"),
        (FPN, {"channels": (64, None)}, "recipes hold TOML values only"),
        (PathDefault, {}, "default cache = .* is not a TOML value"),
    ],
)
def test_decoder_violations(factory: type, params: dict, message: str) -> None:
    with pytest.raises(PluginContractError, match=message):
        check_decoder(factory, **params)


# ------------------------------------------------------------------------------------------------ encoders, heads
class Stride8Encoder(TimmEncoder):
    def __init__(self) -> None:
        super().__init__(arch="resnet18", out_indices=(2, 3, 4))


class HalfPrecisionBinary(DBHead):
    def forward(self, features, return_all=None):  # noqa: ANN001, ANN201
        out = super().forward(features, return_all)
        if "binary" in out:
            out["binary"] = out["binary"].bfloat16()
        return out


def test_encoder_and_head_violations() -> None:
    with pytest.raises(PluginContractError, match="first level must have stride 4, got 8"):
        check_encoder(Stride8Encoder)
    with pytest.raises(PluginContractError, match="'binary' must be computed in float32"):
        check_head(HalfPrecisionBinary)


# ------------------------------------------------------------------------------------------------ losses
class HalfPrecisionLoss(nn.Module):
    def forward(self, outputs, targets):  # noqa: ANN001, ANN201
        return {"loss": (outputs["logits"] * 0.5).mean()}


class PerPixelLoss(nn.Module):
    def forward(self, outputs, targets):  # noqa: ANN001, ANN201
        return {"loss": (outputs["logits"].float() - targets["shrink_map"][:, None]).abs()}


class UnsafeRatioLoss(nn.Module):
    """Divides by the number of text pixels: NaN on a page without text."""

    def forward(self, outputs, targets):  # noqa: ANN001, ANN201
        logits = outputs["logits"].float().squeeze(1)
        gt = targets["shrink_map"]
        bce = nn.functional.binary_cross_entropy_with_logits(logits, gt, reduction="none")
        return {"loss": (bce * gt).sum() / gt.sum()}


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (HalfPrecisionLoss, "'loss' is torch.bfloat16 under autocast"),
        (PerPixelLoss, "'loss' must be a scalar"),
        (UnsafeRatioLoss, "not finite on the 'no text' case"),
    ],
)
def test_loss_violations(factory: type, message: str) -> None:
    with pytest.raises(PluginContractError, match=message):
        check_loss(factory)


# ------------------------------------------------------------------------------------------------ loggers
class NoClose:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def start(self, info: dict) -> None: ...

    def log(self, step: int, metrics: dict) -> None: ...


class CloseTwiceFails(JsonlLogger):
    def close(self) -> None:
        assert self.stream is not None, "closed twice"
        super().close()


class RejectsNan(JsonlLogger):
    def log(self, step: int, metrics: dict) -> None:
        if any(value != value for value in metrics.values()):
            raise ValueError("NaN metric")
        super().log(step, metrics)


def test_logger_violations(tmp_path: Path) -> None:
    with pytest.raises(PluginContractError, match=r"must define close\(\)"):
        check_logger(NoClose, tmp_path / "a")
    with pytest.raises(PluginContractError, match=r"a second close\(\) raised AssertionError: closed twice \(close\(\) must be idempotent"):
        check_logger(CloseTwiceFails, tmp_path / "b")
    with pytest.raises(PluginContractError, match=r"log\(\) of a NaN loss raised ValueError: NaN metric \(.*metrics may be NaN\)"):
        check_logger(RejectsNan, tmp_path / "c")


def test_no_host_sync_restores_tensor_methods() -> None:
    value = torch.tensor(2.0)
    with pytest.raises(PluginContractError), no_host_sync():
        value.item()
    assert value.item() == 2.0 and bool(value)
