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
