"""``dbtk models``: build a recipe's model and show its components, parameter counts and output shape.

Also home of :func:`check_model`, the build-and-forward check that ``dbtk recipe check`` and ``dbtk train`` run
before anything else touches the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import torch

    from dbtk.models.builder import DBNet
    from dbtk.recipe import Recipe
    from dbtk.registry import Registry

#: Largest --size side: the recipe's largest image side (dbtk.recipe.MAX_SIDE; not imported: --help stays light).
MAX_SIDE = 8192
#: The side of the forward pass :func:`check_model` runs when no size is asked for: small, and a multiple of 32.
CHECK_SIDE = 64
SIDE = click.IntRange(32, MAX_SIDE)


@click.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. model.encoder.arch=resnet50.")
@click.option("--size", type=(SIDE, SIDE), default=(640, 640), show_default=True, metavar="H W",
              help=f"Input size for the shape check (32 to {MAX_SIDE} each).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(recipe: str | None, overrides: tuple[str, ...], size: tuple[int, int], as_json: bool) -> None:
    """Build the model of RECIPE (default: the built-in defaults) and count its parameters.

    Runs one forward pass at --size on the CPU to show the output maps.
    """
    from dbtk import recipe as recipes
    from dbtk.cli import _ui

    resolved = recipes.load(recipe, overrides) if recipe else recipes.with_overrides(recipes.Recipe(), overrides)
    if not as_json:
        _ui.step("building the model (imports torch)...")
    from dbtk.models.builder import parameter_counts

    model, out = check_model(resolved, size)
    counts = parameter_counts(model)
    rows = [
        {"part": "encoder", "component": resolved.model.encoder.name, "parameters": counts["encoder"],
         "detail": f"channels {model.encoder.channels}, strides {getattr(model.encoder, 'strides', '?')}"},
        {"part": "decoder", "component": resolved.model.decoder.name, "parameters": counts["decoder"],
         "detail": f"out_channels {model.decoder.out_channels}"},
        {"part": "head", "component": resolved.model.head.name, "parameters": counts["head"],
         "detail": "outputs " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items())},
    ]
    if as_json:
        _ui.print_json({"components": rows, "total_parameters": sum(counts.values())})
        return
    from rich.table import Table

    table = Table(title=f"model at {size[0]}×{size[1]}", title_justify="left")
    for column in ("part", "component", "parameters", "detail"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for row in rows:
        table.add_row(row["part"], row["component"], f"{row['parameters']:,}", row["detail"])
    table.add_row("total", "", f"{sum(counts.values()):,}", "", style="bold")
    _ui.console().print(table)


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
    from typing import cast

    import torch

    from dbtk.errors import DbtkError
    from dbtk.models.builder import build_loss, build_model
    from dbtk.registry import registry

    blaming = cast("Registry", _Blaming(reg or registry))  # build() is all the builder calls
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(recipe.model, blaming).eval()
        build_loss(recipe.loss, blaming)
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


class _Blaming:
    """A registry for :func:`dbtk.models.builder.build_model`: a component constructor's own exception becomes a
    DbtkError the builder prefixes with the component's table. Argument errors (TypeError, ValueError) pass through:
    the builder words those as 'rejected its parameters'."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def build(self, kind: str, spec: dict[str, Any], **provided: Any) -> Any:
        from dbtk.errors import DbtkError

        try:
            return self.reg.build(kind, spec, **provided)
        except (DbtkError, TypeError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001 - a component's own failure, reported as that component's
            raise DbtkError(f"{kind} '{spec['name']}' failed to build: {_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
