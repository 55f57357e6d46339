"""Recipe → model and loss, through the registry: the one place components are wired together."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.recipe import Component, Model, Recipe
    from dbtk.registry import Registry


#: The side of the forward pass :func:`check_model` runs when no size is asked for: small, and a multiple of 32.
CHECK_SIDE = 64
#: ImageNet statistics in 0–255 units: what timm encoders are trained with.
IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)


class DBNet(nn.Module):
    """Encoder → decoder → head on RGB images with values in 0–255 (uint8 or float).

    Normalisation lives in the model so that data loaders move uint8 (4× less host-to-device traffic) and an
    exported model needs no separate preprocessing. Output maps are resized to the input when its size is not
    a multiple of 32.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, return_all: bool | None = None) -> dict[str, torch.Tensor]:
        x = (images.float() - self.mean) / self.std
        out = self.head(self.decoder(self.encoder(x)), return_all=return_all)
        size = images.shape[-2:]
        if out["prob"].shape[-2:] != size:
            out = {k: F.interpolate(v, size=size, mode="bilinear", align_corners=False) for k, v in out.items()}
        return out


def build_model(spec: Model, reg: Registry | None = None) -> DBNet:
    """Build encoder, decoder and head from the recipe's ``[model]`` tables."""
    reg = reg or _default_registry()
    encoder = _build(reg, "encoder", "model.encoder", spec.encoder)
    channels = getattr(encoder, "channels", None)
    strides = list(getattr(encoder, "strides", []))
    if channels is None:
        raise DbtkError(f"encoder '{spec.encoder.name}' does not report its output 'channels'")
    if strides and strides[0] != 4:
        raise DbtkError(
            f"encoder '{spec.encoder.name}' returns its finest feature at stride {strides[0]}; the DB head needs stride 4",
            hint="choose out_indices whose first level has stride 4",
        )
    decoder = _build(reg, "decoder", "model.decoder", spec.decoder, in_channels=list(channels))
    head = _build(reg, "head", "model.head", spec.head, in_channels=decoder.out_channels)
    return DBNet(encoder, decoder, head)


def build_loss(spec: Component, reg: Registry | None = None) -> nn.Module:
    return _build(reg or _default_registry(), "loss", "loss", spec)


def check_model(
    recipe: Recipe, size: tuple[int, int] = (CHECK_SIDE, CHECK_SIDE), reg: Registry | None = None
) -> tuple[DBNet, dict[str, torch.Tensor]]:
    """Build the recipe's model and loss on the CPU and run the model once on a ``1×3×H×W`` input.

    What passes can be built and run: an exception from a component's constructor or forward becomes one
    :class:`DbtkError` naming its table and the cause, e.g. ``model.decoder: decoder 'fpn' failed to build:
    RuntimeError: ...``. Warnings of a failed build are dropped (the error says what matters); those of a good
    one are shown. Returns the model (eval mode) and its outputs.
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(recipe.model, reg).eval()
        build_loss(recipe.loss, reg)
        running: list[str] = []  # the component whose forward is under way, innermost last

        def enter(part: str) -> Callable[..., None]:
            return lambda *_: running.append(part)

        def leave(*_: object) -> None:  # a forward hook that returned a value would replace the output
            running.pop()

        hooks = [
            hook
            for part in ("encoder", "decoder", "head")
            for hook in (getattr(model, part).register_forward_pre_hook(enter(part)), getattr(model, part).register_forward_hook(leave))
        ]
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, 3, *size), return_all=True)
        except Exception as exc:  # noqa: BLE001 - any failure of a component's code is reported as that component's
            part = running[-1] if running else "head"  # past the head: DBNet reading the head's outputs
            component = getattr(recipe.model, part)
            raise DbtkError(
                f"model.{part}: {part} '{component.name}' failed on a 1×3×{size[0]}×{size[1]} input: {_cause(exc)}",
                hint=f"check the parameters in [model.{part}] of the recipe",
            ) from exc
        finally:
            for hook in hooks:
                hook.remove()
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model, out


def parameter_counts(model: DBNet) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ("encoder", "decoder", "head")}


def _build(reg: Registry, kind: str, path: str, spec: Component, **provided: Any) -> Any:
    try:
        return reg.build(kind, spec.as_table(), **provided)
    except DbtkError as exc:
        exc.message = f"{path}: {exc.message}"
        raise
    except (TypeError, ValueError) as exc:  # a component rejected its arguments
        raise DbtkError(f"{path}: {kind} '{spec.name}' rejected its parameters: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a component's own failure is reported as that component's
        raise DbtkError(f"{path}: {kind} '{spec.name}' failed to build: {_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _default_registry() -> Registry:
    from dbtk.registry import registry

    return registry


def load_model(path: str | Path) -> tuple[torch.nn.Module, Recipe]:
    """Build the model described by a checkpoint's recipe and load its weights (shapes and keys must match)."""
    from dbtk.io.checkpoint import read_weights, without_pretrained

    tensors, recipe, _ = read_weights(path)
    model = build_model(without_pretrained(recipe).model)
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
