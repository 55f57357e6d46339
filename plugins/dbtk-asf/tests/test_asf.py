"""dbtk-asf's own tests: the contract (through dbtk's plugin kit) plus what is specific to ASF."""

from __future__ import annotations

import pytest
import torch

from dbtk.testing import PluginContractError, check_decoder
from dbtk_asf import ASF


@pytest.mark.parametrize("attention", ["scale_channel_spatial", "scale_spatial"])
def test_contract(attention: str) -> None:
    check_decoder(ASF, channels=64, attention=attention)


def test_contract_with_three_levels_and_other_channels() -> None:
    check_decoder(ASF, encoder_channels=(24, 40, 112), strides=(4, 8, 16), channels=96, size=(64, 96))


def test_attention_weights_are_per_level_and_bounded() -> None:
    decoder = ASF([16, 32, 64, 128], channels=32).eval()
    features = [torch.randn(1, c, 64 // s, 96 // s) for c, s in zip([16, 32, 64, 128], [4, 8, 16, 32], strict=True)]
    captured = {}
    decoder.attention.register_forward_hook(lambda _m, _i, out: captured.setdefault("weights", out))
    with torch.no_grad():
        decoder(features)
    weights = captured["weights"]
    assert weights.shape == (1, 4, 16, 24)
    assert bool(((weights > 0) & (weights < 1)).all())


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ASF([16, 32, 64, 128], channels=30)
    with pytest.raises(PluginContractError, match="unknown parameter 'atention'"):
        check_decoder(ASF, channels=64, atention="scale_spatial")


def test_registered_under_dbtk_decoders() -> None:
    from dbtk.registry import registry

    entry = registry.resolve("decoder", "asf")
    assert entry.dist == "dbtk-asf" and registry.load("decoder", "asf") is ASF


def _batch_norm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    stats = {"weight": (channels,), "bias": (channels,), "running_mean": (channels,), "running_var": (channels,)}
    return {f"{prefix}.{name}": shape for name, shape in {**stats, "num_batches_tracked": ()}.items()}


def test_state_dict_layout_is_stable() -> None:
    """Trained ASF checkpoints load by key and shape, so the layout (FPN's layers, dbtk's ``conv_bn_relu`` as
    ``pre_attention``, the attention branches) must not move when the code behind it is refactored."""
    layout = {key: tuple(value.shape) for key, value in ASF([16, 32, 64, 128], channels=64).state_dict().items()}
    assert layout == {
        **{f"lateral.{i}.weight": (64, c, 1, 1) for i, c in enumerate([16, 32, 64, 128])},
        **{f"smooth.{i}.weight": (16, 64, 3, 3) for i in range(4)},
        **_batch_norm("fuse.0", 64),
        "pre_attention.0.weight": (64, 64, 3, 3),
        **_batch_norm("pre_attention.1", 64),
        "attention.channel.1.weight": (16, 64, 1, 1),
        "attention.channel.3.weight": (64, 16, 1, 1),
        "attention.spatial.0.weight": (1, 1, 3, 3),
        "attention.spatial.2.weight": (1, 1, 1, 1),
        "attention.to_levels.0.weight": (4, 64, 1, 1),
    }
