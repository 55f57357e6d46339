"""``dbtk weights``: timm's published encoder weights in the Hugging Face hub cache — list, fetch, import.

Air-gapped clusters fetch on a node that reaches the hub and train offline (``HF_HUB_OFFLINE=1``) from the same
cache; a weights file obtained some other way is imported into the cache under its tag.
"""

from __future__ import annotations

import click

from dbtk.cli import ExistingPath


@click.group()
def weights() -> None:
    """Pretrained encoder weights in the Hugging Face hub cache (HF_HOME / HF_HUB_CACHE).

    \b
    dbtk weights fetch resnet18.a1_in1k        # on a machine that reaches the hub
    HF_HUB_OFFLINE=1 dbtk train recipe.toml    # pretrained = true or "resnet18.a1_in1k", from the cache
    """


@weights.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json: bool) -> None:
    """List the weights in the hub cache, and whether dbtk can load them (model.safetensors)."""
    from dbtk.cli import _ui
    from dbtk.models import weights as hub

    cache, found = hub.hub_cache(), hub.cached_models()
    if as_json:
        _ui.print_json({
            "cache": str(cache),
            "offline": hub.offline(),
            "models": [{"name": m.name, "repo_id": m.repo_id, "revision": m.revision, "files": list(m.files),
                        "bytes": m.size, "loadable": m.loadable} for m in found],
        })
        return
    from rich.markup import escape
    from rich.table import Table

    mode = "offline (HF_HUB_OFFLINE)" if hub.offline() else "online: missing weights are downloaded when a recipe asks for them"
    if not found:
        _ui.console().print(f"no weights in {escape(str(cache))}; {mode}")
        return
    table = Table(title=f"{cache} — {mode}", title_justify="left")
    for column in ("pretrained", "revision", "files", "MiB", "loadable"):
        table.add_column(column, justify="right" if column == "MiB" else "left")
    for m in found:
        loadable = "[green]yes[/]" if m.loadable else f"[red]no[/]: pickle only (dbtk weights import FILE --tag {escape(m.name)})"
        table.add_row(escape(m.name), (m.revision or "-")[:12], ", ".join(m.files), f"{m.size / 2**20:.1f}", loadable)
    _ui.console().print(table)


@weights.command()
@click.argument("names", nargs=-1, required=True)
def fetch(names: tuple[str, ...]) -> None:
    """Download NAMES (timm pretrained tags such as resnet18.a1_in1k, or architectures: their default tag) into the
    hub cache, model.safetensors only; weights already cached are not downloaded again."""
    from dbtk.cli import _ui
    from dbtk.models import weights as hub

    _ui.step("resolving pretrained tags (imports timm)...")
    for name in names:
        source = hub.hub_weights(name)
        cached = source.cached()
        path = cached or hub.fetch(source)
        status = "already cached" if cached else "fetched"
        _ui.console().print(f"[green]✓[/] {source.tag} ({source.repo_id}) {status}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@weights.command("import")
@click.argument("file", type=ExistingPath(dir_okay=False))
@click.option("--tag", required=True, help="timm pretrained tag to file the weights under, e.g. resnet18.a1_in1k.")
def import_command(file: str, tag: str) -> None:
    """Put FILE (.safetensors, or a torch checkpoint read with weights_only) into the hub cache as TAG's
    model.safetensors, after checking that timm loads it into TAG's architecture."""
    from dbtk.cli import _ui
    from dbtk.models import weights as hub

    _ui.step(f"checking {file} against {tag} (imports torch)...")
    path = hub.import_file(file, hub.hub_weights(tag))
    _ui.console().print(f"[green]✓[/] {file} → {path}; recipes load it offline with pretrained = \"{tag}\"")
