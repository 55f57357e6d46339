"""Safe loading of weight files: safetensors, or torch files with ``weights_only=True`` — never plain unpickling."""

from __future__ import annotations

from pathlib import Path

import torch

from dbtk.errors import DbtkError

#: Wrappers that training scripts put around state dicts, and prefixes DDP/EMA/feature wrappers add to keys.
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_KEY_PREFIXES = ("module.", "model.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file (``.safetensors``, or a torch checkpoint loaded with weights_only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DbtkError(
            f"weights file not found: {path}",
            hint="dbtk never downloads weights: point 'pretrained' at a local .safetensors or .pth file, or set it to false",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with forbidden globals, ...
        raise DbtkError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DbtkError(f"{path} does not hold a state dict of tensors")
    return state


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> tuple[int, int]:
    """Load the tensors whose names and shapes match ``module``; returns (loaded, expected).

    Classifier weights and wrapper prefixes are expected differences between a checkpoint of a full timm model
    and the feature extractor dbtk builds; a file where nothing matches is an error.
    """
    own = module.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key
        for prefix in _KEY_PREFIXES:
            if name not in own and name.startswith(prefix):
                name = name[len(prefix) :]
        if name in own and own[name].shape == tensor.shape:
            matched[name] = tensor
    if not matched:
        raise DbtkError(
            f"no tensor in {source} matches the model (wrong architecture?)",
            hint="the weights must come from the same timm architecture as 'arch'",
        )
    module.load_state_dict(matched, strict=False)
    return len(matched), len(own)
