"""``dbtk clean-data``: report dataset problems by category and write a repaired copy. Never modifies SRC."""

from __future__ import annotations

import os

import click

from dbtk.cli import ExistingPath, FiniteFloatRange


@click.command("clean-data")
@click.argument("src", type=ExistingPath(file_okay=False))
@click.option("--annotations", type=ExistingPath(dir_okay=True), help="Label file or folder (receipt JSON file; ICDAR gts folder when not SRC/gts).")
@click.option("--format", "format_name", default=None, help="Dataset format: icdar2015 (default) or receipt-json; any registered reader.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Write the repaired copy here.")
@click.option("--check", is_flag=True, help="Only report; exit 1 if anything is wrong.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
@click.option("--min-size", type=FiniteFloatRange(0, 10_000), default=0.0, show_default=True, help="Mark text whose short side is below this (px) as don't-care.")
@click.option("--workers", type=click.IntRange(1, 1024), default=None, help="Processes to use (default: all CPUs).")
def clean_data(
    src: str, annotations: str | None, format_name: str | None, out: str | None, check: bool,
    report: str | None, min_size: float, workers: int | None,
) -> None:
    """Scan the dataset at SRC, print problems by category, and (with --out) write a repaired copy.

    Problems are counted per category with examples (file:line): unreadable, corrupt and truncated images,
    missing label files, bad lines, non-finite or out-of-bounds coordinates, self-intersecting, degenerate and
    mis-ordered polygons, EXIF-rotated photos. The copy holds upright images and repaired labels; dropped
    polygons are listed in the report.
    """
    from pathlib import Path

    from dbtk.cli import _ui, require_apart, require_report_outside, require_samples
    from dbtk.errors import CheckFailed, DbtkError

    if bool(out) == check:
        raise DbtkError("give exactly one of --out DST and --check", hint="dbtk clean-data SRC --check, or dbtk clean-data SRC --out DST")
    require_apart({"--out": out, "--report": report}, {"SRC": src, "--annotations": annotations})
    require_report_outside(report, out)
    from dbtk.data import clean
    from dbtk.data.formats import default_format, open_split

    format_name = format_name or default_format(annotations)
    _ui.step(f"indexing {src} as {format_name}")

    reader = open_split(src, annotations, format_name)
    require_samples(reader, src, "check")
    writer = clean.Writer(Path(out), format_name) if out else None
    with _ui.progress("scanning", len(reader)) as advance:
        result_report = clean.scan_split(reader, src, format_name, workers or os.cpu_count() or 1, min_size, writer, advance)

    _ui.data_report(result_report)
    if report:
        import json

        Path(report).write_text(json.dumps(result_report.to_json(), indent=2), encoding="utf-8")
    if out:
        _ui.console().print(f"[green]✓[/] repaired copy written to {out} ({result_report.usable_images} images, {result_report.polygons_kept} polygons)")
    if check and result_report.problem_count:
        raise CheckFailed(f"{result_report.problem_count} problems found in {src}", hint="write a repaired copy with --out DST")
