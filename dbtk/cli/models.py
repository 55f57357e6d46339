"""``dbtk models``: build a recipe's model and show its components, parameter counts and output shape."""

from __future__ import annotations

import click

#: Largest --size side: the recipe's largest image side (dbtk.recipe.MAX_SIDE; not imported: --help stays light).
MAX_SIDE = 8192
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
    from dbtk.models.builder import check_model, parameter_counts

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
