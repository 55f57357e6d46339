"""``dbtk plugins``: every registered component by group, its distribution and (with --check) its health."""

from __future__ import annotations

import click

from dbtk.cli import FiniteFloatRange


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--check", is_flag=True, help="Import every component and report which ones are broken.")
@click.option("--timeout", type=FiniteFloatRange(0, 3600, min_open=True), default=30.0, show_default=True, help="Seconds allowed per import with --check.")
def plugins(as_json: bool, check: bool, timeout: float) -> None:
    """List registered encoders, decoders, heads, losses, loggers and dataset readers.

    Listing reads package metadata only and imports nothing. With --check each component is imported; a broken
    plugin is shown as broken and the command still succeeds (exit 0) for the rest.
    """
    from dbtk.cli import _ui
    from dbtk.registry import check_entry, registry

    entries = registry.entries()
    if check and not as_json:
        _ui.step(f"importing {len(entries)} components (this loads torch)...")
    rows = []
    for entry in entries:
        row = {
            "group": entry.kind,
            "name": entry.name,
            "distribution": entry.dist,
            "version": entry.dist_version,
            "object": entry.value,
        }
        if check:
            status = check_entry(registry, entry, timeout)
            row["status"] = status.status
            row["detail"] = status.detail
            if status.stdout:
                row["printed_on_import"] = status.stdout
        rows.append(row)

    if as_json:
        _ui.print_json(rows)
        return
    _print_table(rows, check)


def _print_table(rows: list[dict[str, str]], check: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from dbtk.cli import _ui

    table = Table(title="dbtk components", title_justify="left")
    for column in ("group", "name", "distribution", "object"):
        table.add_column(column)
    if check:
        table.add_column("status")
    for row in rows:
        cells = [escape(c) for c in (row["group"], row["name"], f"{row['distribution']} {row['version']}", row["object"])]
        if check:
            ok = row["status"] == "ok"
            cells.append("[green]ok[/]" if ok else f"[red]{row['status']}[/]: {escape(row['detail'])}")
        table.add_row(*cells)
    _ui.console().print(table)
    if not rows:
        _ui.warn("no components registered: is dbtk installed (pip install -e .)?")
    for row in rows:
        if row.get("printed_on_import"):
            _ui.warn(f"{row['group']} '{row['name']}' ({row['distribution']}) printed to stdout on import")
