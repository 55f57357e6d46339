"""``dbtk models``: build a recipe's model and show its components, parameter counts and output shape."""

from __future__ import annotations

import click


@click.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. model.encoder.arch=resnet50.")
@click.option("--size", type=(int, int), default=(640, 640), show_default=True, metavar="H W", help="Input size for the shape check.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(recipe: str | None, overrides: tuple[str, ...], size: tuple[int, int], as_json: bool) -> None:
    """Build the model of RECIPE (default: the built-in defaults) and count its parameters.

    Runs one forward pass at --size on the CPU to show the output maps.
    """
    from dbtk import recipe as recipes
    from dbtk.cli import _ui

    if recipe is None:
        data: dict = {}
        for override in overrides:
            recipes.apply_override(data, override)
        spec = recipes.structure(data, source="--set").model
    else:
        spec = recipes.load(recipe, overrides).model
    if not as_json:
        _ui.step("building the model (imports torch)...")
    import torch

    from dbtk.models.builder import build_model, parameter_counts

    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *size), return_all=True)
    counts = parameter_counts(model)
    rows = [
        {"part": "encoder", "component": spec.encoder.name, "parameters": counts["encoder"],
         "detail": f"channels {model.encoder.channels}, strides {getattr(model.encoder, 'strides', '?')}"},
        {"part": "decoder", "component": spec.decoder.name, "parameters": counts["decoder"],
         "detail": f"out_channels {model.decoder.out_channels}"},
        {"part": "head", "component": spec.head.name, "parameters": counts["head"],
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
