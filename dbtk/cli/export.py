"""``dbtk export``: a checkpoint → a self-describing safetensors bundle or ONNX file, optionally checked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import numpy as np

    from dbtk.recipe import Recipe

#: Largest |torch − exported| probability difference --check accepts.
TOLERANCE = 1e-4

#: ONNX opsets the TorchScript exporter dbtk uses can write for a DBNet: up to its maximum
#: (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, 20 in torch 2.x), from 9 (below it nearest
#: upsampling has no ONNX form). tests/test_cli.py checks this against the installed torch.
OPSETS = (9, 20)


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write (.safetensors or .onnx).")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "onnx"]), default=None,
              help="Output format (default: from the --out suffix).")
@click.option("--opset", type=click.IntRange(*OPSETS), default=17, show_default=True, help="ONNX opset.")
@click.option("--dynamic/--static", default=True, show_default=True,
              help="ONNX: dynamic batch, height and width (multiples of 32), or a fixed BATCH × SIZE × SIZE input.")
@click.option("--size", type=click.IntRange(32, 8192), default=None, help="Static ONNX input side (default: the recipe's eval.long_side).")
@click.option("--batch", type=click.IntRange(1, 1024), default=1, show_default=True, help="Static ONNX batch size.")
@click.option("--check", is_flag=True, help="Run the export on images and compare with the checkpoint (exit 1 on a mismatch).")
@click.option("--images", multiple=True, type=click.Path(), help="Images (files, folders, globs) for --check (default: 4 of the recipe's validation split).")
def export(
    checkpoint: str, out: str, fmt: str | None, opset: int, dynamic: bool, size: int | None, batch: int,
    check: bool, images: tuple[str, ...],
) -> None:
    """Export CHECKPOINT for deployment; the file carries its recipe, so it needs nothing else to run.

    \b
    dbtk export runs/docs/checkpoints/best.safetensors --out docs.onnx --check
    dbtk export runs/docs/checkpoints/best.safetensors --out docs.safetensors
    """
    from pathlib import Path

    from dbtk.cli import _ui
    from dbtk.errors import DbtkError

    fmt = fmt or {".onnx": "onnx", ".safetensors": "safetensors"}.get(Path(out).suffix.lower())
    if fmt is None:
        raise DbtkError(f"cannot tell the format from '{out}'", hint="name it .onnx or .safetensors, or pass --format")
    if Path(checkpoint).suffix.lower() == ".onnx":
        raise DbtkError(f"{checkpoint} is an ONNX file; export starts from a dbtk checkpoint", hint="pass the .safetensors file it was exported from")
    if Path(out).resolve() == Path(checkpoint).resolve():
        raise DbtkError("--out is the checkpoint itself", hint="write the export to a new file")
    if fmt == "onnx":
        from dbtk.infer.onnx_runtime import require

        require("onnx")  # say which extra is missing before the slow part
    _ui.step(f"loading {checkpoint} (imports torch)...")
    from dbtk.infer import export as exporting

    if fmt == "onnx":
        recipe = exporting.export_onnx(checkpoint, out, opset=opset, dynamic=dynamic, size=size, batch=batch)
    else:
        recipe = exporting.export_bundle(checkpoint, out)
    side = size or recipe.eval.long_side
    shape = f"{batch} × 3 × {side} × {side}" if fmt == "onnx" and not dynamic else "N × 3 × H × W (H, W multiples of 32)"
    megabytes = Path(out).stat().st_size / 2**20
    _ui.console().print(f"[green]✓[/] {fmt} → {out} ({megabytes:.1f} MiB); input uint8 RGB {shape}, recipe '{recipe.name}' embedded")
    if check:
        _check(checkpoint, out, recipe, images)


def _check(checkpoint: str, out: str, recipe: Recipe, images: tuple[str, ...]) -> None:
    from rich.table import Table

    from dbtk.cli import _ui
    from dbtk.errors import CheckFailed
    from dbtk.infer.detector import Detector
    from dbtk.infer.export import compare

    samples = _check_images(recipe, images)
    results = compare(Detector.from_checkpoint(checkpoint, "cpu"), Detector.load(out, "cpu"), samples)
    table = Table(title=f"{out} vs {checkpoint}", title_justify="left")
    for column in ("image", "input h×w", "max |Δp|", "boxes ckpt", "boxes export", "same boxes"):
        table.add_column(column, justify="left" if column == "image" else "right")
    for r in results:
        ok = r.max_abs_diff <= TOLERANCE
        table.add_row(r.image, f"{r.input_size[0]}×{r.input_size[1]}", f"[{'green' if ok else 'red'}]{r.max_abs_diff:.2e}[/]",
                      str(r.reference_boxes), str(r.export_boxes), "[green]yes[/]" if r.boxes_identical else "[red]no[/]")
    _ui.console().print(table)
    failed = [r.image for r in results if r.max_abs_diff > TOLERANCE or not r.boxes_identical]
    if failed:
        raise CheckFailed(f"the export differs from the checkpoint on {len(failed)} of {len(results)} images: {', '.join(failed)}",
                          hint=f"tolerance {TOLERANCE:g} on probabilities; try another --opset, or report it with the table above")
    worst = max(r.max_abs_diff for r in results)
    _ui.console().print(f"[green]✓[/] {len(results)} images: max |Δprob| {worst:.2e} ≤ {TOLERANCE:g}, identical boxes")


def _check_images(recipe: Recipe, images: tuple[str, ...], count: int = 4) -> list[tuple[str, np.ndarray]]:
    """Named RGB arrays: the given files, or the first few of the recipe's validation split."""
    from dbtk.data.images import ImageError, read_image
    from dbtk.errors import DbtkError

    if images:
        from dbtk.data.formats import image_files

        try:
            return [(path.name, read_image(path).image) for path in image_files(images)]
        except ImageError as exc:
            raise DbtkError(f"--check cannot use {exc}", hint="pass readable images with --images") from None
    if recipe.data.val is None:
        raise DbtkError("--check needs images: the checkpoint's recipe has no data.val", hint="pass --images PATH")
    from dbtk.registry import registry

    try:
        reader = registry.build("dataset", recipe.data.format.as_table(), split=recipe.data.val)
        loaded = [reader.load(i) for i in range(min(count, len(reader)))]
    except DbtkError as exc:
        raise DbtkError(f"--check cannot read the recipe's validation split ({exc.message})", hint="pass --images PATH") from None
    if not loaded:
        raise DbtkError("--check found no images in the recipe's validation split", hint="pass --images PATH")
    return [(sample.name, sample.decoded.image) for sample in loaded]
