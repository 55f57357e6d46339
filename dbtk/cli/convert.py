"""``dbtk convert``: read a labelled split in one format, write it in another, through the one label path.

Never modifies SRC. The copy holds what training would see: every label repaired (and every change reported)
exactly as ``dbtk clean-data`` does, with the same table and ``--report``.
"""

from __future__ import annotations

import os
import click

from dbtk.cli import ExistingPath

#: ``dbtk.data.clean.WRITABLE``, spelled out here because command modules import only click at start-up
#: (``tests/test_convert.py`` keeps the two equal).
WRITABLE = ("coco", "icdar2015", "labelme", "ppocr", "receipt-json")


@click.command("convert")
@click.argument("src", type=ExistingPath(file_okay=False))
@click.option("--annotations", type=ExistingPath(), help="Label file or folder, for formats that keep labels apart from the images (COCO, Label Studio, receipt JSON: the file).")
@click.option("--from", "format_name", required=True, metavar="FORMAT", help="Format of SRC: any registered reader, e.g. labelme, label-studio, ppocr, coco, doctr, totaltext, ctw1500, icdar2015, receipt-json.")
@click.option("--to", "to_format", required=True, type=click.Choice(WRITABLE), help="Format to write.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New (or empty) folder for the converted copy.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the full report as JSON (the same as clean-data's).")
@click.option("--workers", type=click.IntRange(1, 1024), default=None, help="Processes to use (default: all CPUs).")
def convert(src: str, annotations: str | None, format_name: str, to_format: str, out: str, report: str | None, workers: int | None) -> None:
    """Convert the labelled split at SRC from one format to another.

    Every label goes through the label path training uses: polygons are repaired (and every change reported in
    the same table as clean-data), images nothing can be learned from are left out, EXIF-rotated photos are
    written upright. Coordinates are written as the exact float32 values training would see, so converting back
    gives the same polygons and don't-care flags. ICDAR2015 lines hold 4 points: longer polygons become their
    minimum-area rectangle there (counted in a warning); every other output keeps all points.
    """
    import json
    from pathlib import Path

    from rich.markup import escape

    from dbtk.cli import _ui, require_apart, require_report_outside, require_samples
    from dbtk.errors import DbtkError

    destination = Path(out)
    require_apart({"--out": out, "--report": report}, {"SRC": src, "--annotations": annotations})
    require_report_outside(report, out)
    if destination.is_dir() and any(destination.iterdir()):
        raise DbtkError(f"--out {out} is not empty", hint="convert writes a complete copy into a new (or empty) folder")
    from dbtk.data import clean
    from dbtk.data.formats import open_split

    _ui.step(f"indexing {src} as {format_name}")
    reader = open_split(src, annotations, format_name)
    require_samples(reader, src, "convert")
    writer = clean.Writer(destination, format_name, output=to_format)
    with _ui.progress("converting", len(reader)) as advance:
        result = clean.scan_split(reader, src, format_name, workers or os.cpu_count() or 1, writer=writer, on_image=advance)

    _ui.data_report(result)
    if report:
        Path(report).write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    if writer.squashed:
        _ui.warn(f"ICDAR2015 lines hold 4 points: {writer.squashed} longer polygon(s) were written as their minimum-area rectangles (--to coco, labelme, ppocr or receipt-json keeps every point)")
    split = writer.split()
    table = f'{{ images = "{split.images}", annotations = "{split.annotations}" }}' if split.annotations else f'"{split.images}"'
    _ui.console().print(f"[green]✓[/] {result.usable_images} images, {result.polygons_kept} polygons written to {escape(out)} as {to_format}")
    _ui.console().print(escape(f'  train on it: [data] format = "{to_format}", train = {table}'), soft_wrap=True)
