"""Checkpoint files: safetensors weights with the resolved recipe in the metadata. Never pickle.

A weights file is self-describing: ``Detector.from_checkpoint`` rebuilds the model from the recipe stored in
its metadata. Every write is atomic (temporary file in the same folder, fsync, rename), so a crash or a full
disk leaves the previous file intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

import dbtk
from dbtk import recipe as recipes
from dbtk.errors import DbtkError

FORMAT = "dbtk-weights-1"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Run ``write(temporary_path)`` then move the result over ``path``; on failure ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        with open(tmp, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(path: str | Path, model: torch.nn.Module, recipe: recipes.Recipe, extra: dict[str, str] | None = None) -> None:
    """Write the model's weights plus the resolved recipe and dbtk version, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "dbtk_version": dbtk.__version__, "recipe": recipes.dumps(recipe), **(extra or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], recipes.Recipe, dict[str, str]]:
    """Tensors, recipe and metadata of a dbtk weights file, with a clear error for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DbtkError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DbtkError(
            f"{path} is not a readable safetensors file ({exc})",
            hint="dbtk loads weights only from .safetensors files it wrote (dbtk train / dbtk export)",
        ) from None
    if metadata.get("format") != FORMAT or "recipe" not in metadata:
        raise DbtkError(f"{path} has no dbtk metadata (format {metadata.get('format')!r})", hint="was it written by dbtk?")
    recipe = recipes.loads(metadata["recipe"], source=f"{path} (embedded recipe)")
    return tensors, recipe, metadata


def load_model(path: str | Path) -> tuple[torch.nn.Module, recipes.Recipe]:
    """Build the model described by a checkpoint's recipe and load its weights (shapes and keys must match)."""
    from dbtk.models.builder import build_model

    tensors, recipe, _ = read_weights(path)
    model = build_model(recipe.model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)} (e.g. {missing[0]})" if missing else "",
                f"unexpected {len(unexpected)} (e.g. {unexpected[0]})" if unexpected else "",
                f"wrong shape {len(wrong)} (e.g. {wrong[0]}: {tuple(tensors[wrong[0]].shape)} vs {tuple(expected[wrong[0]].shape)})" if wrong else "",
            )
            if part
        )
        raise DbtkError(f"{path}: weights do not match the model its recipe describes: {detail}")
    model.load_state_dict(tensors)
    return model, recipe
