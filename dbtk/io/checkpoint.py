"""Checkpoint files: safetensors weights with the resolved recipe in the metadata. Never pickle.

A weights file is self-describing: :func:`dbtk.models.builder.load_model` rebuilds the model from the recipe
stored in its metadata. Every write is atomic (temporary file in the same folder, fsync, rename), so a crash or a full
disk leaves the previous file intact.
"""

from __future__ import annotations

from pathlib import Path

import torch

import dbtk
from dbtk import recipe as recipes
from dbtk.errors import DbtkError
from dbtk.io.atomic import atomic_write
from dbtk.io.tree import PREFIX, flatten, unflatten

FORMAT = "dbtk-weights-1"


def save_weights(
    path: str | Path,
    model: torch.nn.Module,
    recipe: recipes.Recipe,
    training_state: object | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> None:
    """Write the model's weights, the resolved recipe and dbtk version — and optionally the training state
    (optimizer, scheduler, scaler, RNGs, position) in the same file, so weights and state can never disagree."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {**(extra_metadata or {}), "format": FORMAT, "dbtk_version": dbtk.__version__, "recipe": recipes.dumps(recipe)}
    if training_state is not None:
        state_tensors, state_json = flatten(training_state)
        tensors.update(state_tensors)
        metadata["train_state"] = state_json
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], recipes.Recipe, object]:
    """Weights, recipe and training state of a ``checkpoints/last.safetensors`` file."""
    tensors, recipe, metadata = read_weights(path, keep_state=True)
    if "train_state" not in metadata:
        raise DbtkError(f"{path} holds weights only, no training state to resume from", hint="resume from checkpoints/last.safetensors")
    state_tensors = {k: v for k, v in tensors.items() if k.startswith(PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}
    return weights, recipe, unflatten(state_tensors, metadata["train_state"])


def read_weights(path: str | Path, keep_state: bool = False) -> tuple[dict[str, torch.Tensor], recipes.Recipe, dict[str, str]]:
    """Tensors, recipe and metadata of a dbtk weights file, with a clear error for anything else.

    Training-state tensors are left out unless ``keep_state``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DbtkError(f"checkpoint not found: {path.absolute()}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys() if keep_state or not key.startswith(PREFIX)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DbtkError(
            f"{path} is not a readable safetensors file ({exc})",
            hint="dbtk loads weights only from .safetensors files it wrote (dbtk train / dbtk export)",
        ) from None
    if metadata.get("format") != FORMAT or "recipe" not in metadata:
        raise DbtkError(f"{path} has no dbtk metadata (format {metadata.get('format')!r})", hint="was it written by dbtk?")
    recipe = recipes.loads(metadata["recipe"], source=f"{path} (embedded recipe)")
    return tensors, recipe, metadata


def without_pretrained(recipe: recipes.Recipe) -> recipes.Recipe:
    """The recipe with the encoder's ``pretrained`` switched off: a weights file carries every tensor, and the
    local ImageNet file the recipe named at training time need not exist where the model is loaded."""
    import attrs

    encoder = recipe.model.encoder
    if not encoder.params.get("pretrained"):
        return recipe
    encoder = attrs.evolve(encoder, params={**encoder.params, "pretrained": False})
    return attrs.evolve(recipe, model=attrs.evolve(recipe.model, encoder=encoder))
