"""``dbtk recipe``: validate recipes and list every recipe key, without training anything."""

from __future__ import annotations

import click


@click.group()
def recipe() -> None:
    """Check recipes and look up recipe keys."""


@recipe.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. train.lr=5e-4.")
@click.option("--no-import", is_flag=True, help="Check component names only; skip importing and building them (no torch).")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved recipe and components as JSON.")
def check(path: str, overrides: tuple[str, ...], no_import: bool, as_json: bool) -> None:
    """Validate RECIPE: keys, types, ranges, component names and parameters, and that the model builds and runs.

    Checks component parameters against their signatures and annotations, builds a reader that reads no files
    (synthetic) so its own checks run, builds the model and loss on the CPU and runs one small forward pass, so a
    recipe that passes can train.
    Prints the fully resolved recipe (defaults filled in, paths absolute) and where each component comes from.
    Exit code 0 when valid, 2 with a one-line error naming the key otherwise.
    """
    from dbtk import recipe as recipes
    from dbtk.cli import _ui
    from dbtk.registry import registry

    if not as_json:
        _ui.step(f"checking {path}")
    resolved_recipe = recipes.load(path, overrides)
    if not no_import and not as_json:
        _ui.step("importing components, building the model and running it once (imports torch)...")
    resolved = recipes.check_components(resolved_recipe, registry, import_components=not no_import)
    if not no_import:
        from dbtk.models.builder import check_model

        check_model(resolved_recipe, reg=registry)

    components = [
        {"key": key, "name": entry.name, "distribution": f"{entry.dist} {entry.dist_version}", "object": entry.value}
        for key, entry in resolved
    ]
    if as_json:
        _ui.print_json({"recipe": recipes.unstructure(resolved_recipe), "components": components})
        return

    from rich.syntax import Syntax
    from rich.table import Table

    _ui.console().print(Syntax(recipes.dumps(resolved_recipe), "toml", theme="ansi_dark", background_color="default"))
    table = Table(title="components", title_justify="left")
    for column in ("key", "name", "distribution", "object"):
        table.add_column(column)
    for row in components:
        table.add_row(*row.values())
    _ui.console().print(table)
    _ui.console().print(f"[green]✓[/] {path} is valid")


@recipe.command()
def keys() -> None:
    """List every recipe key with its type, default and meaning."""
    from rich.table import Table

    from dbtk import recipe as recipes
    from dbtk.cli import _ui

    table = Table(title="recipe keys", title_justify="left")
    for column in ("key", "type", "default", "meaning"):
        table.add_column(column)
    for key, type_name, default, help_text in recipes.field_docs():
        table.add_row(key, type_name, recipes.format_default(default), help_text)
    _ui.console().print(table)
