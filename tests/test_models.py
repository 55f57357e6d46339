"""Model and loss: shapes across encoders, numerical safety under autocast, no host syncs, reference values."""

from __future__ import annotations

import json

import pytest
import torch

from dbtk import recipe as recipes
from dbtk.errors import DbtkError
from dbtk.models.builder import build_loss, build_model
from dbtk.models.encoders import TimmEncoder
from dbtk.models.losses import DBLoss
from tests.conftest import run_dbtk


def make_model(arch: str = "resnet18", channels: int = 64, k: float = 50) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = recipes.Model(
        encoder=recipes.Component("timm", {"arch": arch}),
        decoder=recipes.Component("fpn", {"channels": channels}),
        head=recipes.Component("db", {"k": k}),
    )
    return build_model(spec)


def make_targets(batch: int, height: int, width: int, fill: str = "box") -> dict[str, torch.Tensor]:
    shrink = torch.zeros(batch, height, width)
    thresh_mask = torch.zeros(batch, height, width)
    if fill == "box":
        shrink[:, height // 4 : height // 2, width // 4 : width // 2] = 1
        thresh_mask[:, height // 5 : height // 2 + 4, width // 5 : width // 2 + 4] = 1
    elif fill == "all":
        shrink[:] = 1
        thresh_mask[:] = 1
    return {
        "shrink_map": shrink,
        "shrink_mask": torch.ones(batch, height, width),
        "thresh_map": torch.full((batch, height, width), 0.3) + 0.4 * thresh_mask,
        "thresh_mask": thresh_mask,
    }


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenetv3_large_100", "convnext_atto", "efficientnet_b0"])
@pytest.mark.parametrize("size", [(480, 640), (736, 512)])
def test_output_maps_match_input_size(arch: str, size: tuple[int, int]) -> None:
    model = make_model(arch).train()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    for key in ("logits", "prob", "thresh", "binary"):
        assert out[key].shape == (1, 1, *size), (key, out[key].shape)


def test_sizes_not_multiple_of_32_are_resized_back() -> None:
    model = make_model().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 100, 150))
    assert set(out) == {"logits", "prob"}  # inference skips the threshold branch
    assert out["prob"].shape == (1, 1, 100, 150)


def test_encoder_reports_channels_and_strides() -> None:
    encoder = TimmEncoder("resnet50")
    assert encoder.channels == [256, 512, 1024, 2048]
    assert encoder.strides == [4, 8, 16, 32]
    assert TimmEncoder("convnext_atto").out_indices == (0, 1, 2, 3)


def test_encoder_loads_local_weights(tmp_path) -> None:
    """pretrained = true (the hub cache, offline) is tested in tests/test_weights.py."""
    import timm
    from safetensors.torch import save_file

    with pytest.raises(DbtkError, match="weights file not found"):
        TimmEncoder("resnet18", pretrained=str(tmp_path / "missing.safetensors"))

    torch.manual_seed(1)
    full = timm.create_model("resnet18", pretrained=False)  # a classifier checkpoint, as timm ships them
    save_file(full.state_dict(), tmp_path / "r18.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, tmp_path / "r18.pth")
    for name in ("r18.safetensors", "r18.pth"):
        encoder = TimmEncoder("resnet18", pretrained=str(tmp_path / name))
        assert torch.equal(encoder.body.layer3[0].conv1.weight, full.layer3[0].conv1.weight)
        assert torch.equal(encoder.body.bn1.running_mean, full.bn1.running_mean)


def test_pickle_payload_is_refused(tmp_path, capfd) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=2))
    with pytest.raises(DbtkError, match="cannot read weights file"):
        TimmEncoder("resnet18", pretrained=str(path))
    assert "pwned" not in capfd.readouterr().out


def test_freeze_options() -> None:
    encoder = TimmEncoder("resnet18", freeze_stages=2, frozen_bn=True)
    assert not any(p.requires_grad for p in encoder.body.layer2.parameters())
    assert not encoder.body.conv1.weight.requires_grad
    assert all(p.requires_grad for p in encoder.body.layer3.parameters())
    assert type(encoder.body.layer4[0].bn1).__name__ == "FrozenBatchNorm2d"


def test_unknown_arch_suggests() -> None:
    with pytest.raises(DbtkError, match=r"unknown timm architecture 'resnet19' \(did you mean 'resnet18'\?\)"):
        TimmEncoder("resnet19")


def test_reference_loss_matches_hand_computed_values() -> None:
    """1×2×2 example with negative_ratio 1: one positive, the hardest of three negatives.

    BCE(x, y) = max(x, 0) − x·y + log(1 + e^−|x|):
      BCE(2, 1) = 0.1269280110429725; negatives BCE(−1, 0) = 0.31326168751822286,
      BCE(0.5, 0) = 0.9740769841801067 (the hard one), BCE(−3, 0) = 0.04858735157374206
      prob   = (0.12692801… + 0.97407698…) / (1 + 1 + 1e-6)       = 0.5505022223604283
      dice   = 1 − 2·0.9 / ((0.9 + 0.2 + 0.1 + 0) + 1 + 1e-6)      = 0.18181855371883937
      thresh = (|0.5−0.7| + |0.6−0.7| + |0.7−0.3|) / (3 + 1e-6)   = 0.2333332555555815
      loss   = 5·prob + 1·dice + 10·thresh                          = 5.2676622210767965
    """
    loss_fn = DBLoss(negative_ratio=1.0, min_negatives=0, eps=1e-6)
    outputs = {
        "logits": torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]], dtype=torch.float64),
        "binary": torch.tensor([[[[0.9, 0.2], [0.1, 0.0]]]], dtype=torch.float64),
        "thresh": torch.tensor([[[[0.5, 0.6], [0.3, 0.7]]]], dtype=torch.float64),
    }
    targets = {
        "shrink_map": torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]),
        "shrink_mask": torch.ones(1, 2, 2),
        "thresh_map": torch.tensor([[[0.7, 0.7], [0.3, 0.3]]]),
        "thresh_mask": torch.tensor([[[1.0, 1.0], [0.0, 1.0]]]),
    }
    out = loss_fn(outputs, targets)
    assert out["prob"].item() == pytest.approx(0.5505022223604283, abs=1e-6)
    assert out["binary"].item() == pytest.approx(0.18181855371883937, abs=1e-6)
    assert out["thresh"].item() == pytest.approx(0.2333332555555815, abs=1e-6)
    assert out["loss"].item() == pytest.approx(5.2676622210767965, abs=1e-6)
    # with the default 3:1 ratio all three negatives count: (0.1269… + 0.3133… + 0.9741… + 0.0486…) / 4
    three_to_one = DBLoss(min_negatives=0, eps=1e-6)(outputs, targets)
    assert three_to_one["prob"].item() == pytest.approx(0.3657134171504067, abs=1e-6)


def test_loss_in_float32_under_autocast() -> None:
    model = make_model().train()
    loss_fn = build_loss(recipes.Component("db"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64))
        losses = loss_fn(out, make_targets(2, 64, 64))
    assert out["logits"].dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in losses.values())


def _finite_step(model, loss_fn, images, targets, precision: str) -> dict[str, torch.Tensor]:
    """One step as the trainer does it; under fp16 the GradScaler backs off until gradients are finite.

    Scaled fp16 gradients may overflow on the first tries (the scaler starts at 2**16): that is the scaler's
    job to detect and undo, and it must reach finite gradients within a few halvings.
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    for _attempt in range(24):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype):
            losses = loss_fn(model(images), targets)
        assert all(torch.isfinite(v).all() for v in losses.values()), losses
        scaler.scale(losses["loss"]).backward()
        scaler.unscale_(optimizer)
        if all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
            return losses
        scaler.step(optimizer)  # skipped by the scaler because of the inf/NaN it found
        scaler.update()
    raise AssertionError(f"gradients still not finite at scale {scaler.get_scale()}")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("fill", ["box", "empty", "all"])
@pytest.mark.parametrize("k", [50, 100])
@pytest.mark.parametrize("logit", [1e4, -1e4, 0.0])
def test_loss_and_gradients_finite(precision: str, fill: str, k: float, logit: float) -> None:
    model = make_model(channels=32, k=k).train()
    with torch.no_grad():  # force extreme probability logits (the last transposed conv's bias)
        model.head.prob_branch[-1].bias.fill_(logit)
        model.head.prob_branch[-1].weight.mul_(0 if logit else 1)
    loss_fn = DBLoss()
    losses = _finite_step(model, loss_fn, torch.randn(2, 3, 64, 64), make_targets(2, 64, 64, fill), precision)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("fill", ["box", "empty", "all"])
def test_loss_on_extreme_logits_directly(fill: str) -> None:
    logits = torch.tensor([1e4, -1e4], dtype=torch.float16).repeat(2, 1, 8, 4).requires_grad_()
    thresh = torch.full((2, 1, 8, 8), 0.5, requires_grad=True)
    prob = torch.sigmoid(logits.float())
    outputs = {"logits": logits, "prob": prob, "thresh": thresh, "binary": torch.sigmoid(100 * (prob - thresh))}
    losses = DBLoss()(outputs, make_targets(2, 8, 8, fill))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and torch.isfinite(logits.grad).all() and torch.isfinite(thresh.grad).all()


def test_empty_image_still_penalises_false_positives() -> None:
    logits = torch.full((1, 1, 16, 16), 3.0, requires_grad=True)
    losses = DBLoss()({"logits": logits}, make_targets(1, 16, 16, "empty"))
    losses["loss"].backward()
    assert losses["prob"].item() > 1.0  # confident text where there is none costs something
    assert (logits.grad > 0).sum() == 100  # the 100 hardest negatives are pushed down


def test_no_host_sync_in_forward_loss_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(channels=32).train()
    loss_fn = DBLoss()
    images, targets = torch.randn(2, 3, 64, 64), make_targets(2, 64, 64)

    def forbidden(*_args, **_kwargs):
        raise AssertionError("host synchronisation inside the training step")

    for name in ("item", "cpu", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = loss_fn(model(images), targets)
    losses["loss"].backward()
    monkeypatch.undo()
    assert torch.isfinite(losses["loss"]).item()


def test_bf16_forward_close_to_fp32() -> None:
    model = make_model().eval()
    with torch.no_grad():
        model.head.prob_branch[-1].bias.zero_()  # probabilities near 0.5, where the sigmoid is steepest
        images = torch.randn(2, 3, 128, 160)
        full = model(images)["prob"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(images)["prob"].float()
    assert (full - half).abs().max().item() <= 1e-2


def test_builder_errors_name_the_key() -> None:
    spec = recipes.Model(decoder=recipes.Component("fpn", {"chanels": 64}))
    with pytest.raises(DbtkError, match=r"model.decoder: unknown parameter 'chanels' for decoder 'fpn' \(did you mean 'channels'\?\)"):
        build_model(spec)


def test_plugins_lists_builtin_components() -> None:
    proc = run_dbtk("plugins", "--json")
    rows = {(r["group"], r["name"]): r for r in json.loads(proc.stdout)}
    for key in [("encoder", "timm"), ("decoder", "fpn"), ("head", "db"), ("loss", "db")]:
        assert rows[key]["distribution"] == "dbtk"
