"""``dbtk export``: a checkpoint → a self-describing safetensors bundle or ONNX file, optionally checked."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import click

from dbtk.cli import FiniteFloatRange

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from dbtk.data.reader import Reader
    from dbtk.recipe import Recipe

T = TypeVar("T")

#: What --check without --data accepts, per precision: the largest |torch − exported| probability difference, how
#: far (original pixels, Hausdorff) a box may move, and how close to postprocess.box_thresh a box's score must be for
#: it to appear or vanish. fp32 must give identical boxes. fp16 rounds every weight and activation to 11
#: significant bits; on the docs model and 40 docs-dev pages that moved the map by at most 2.0e-3, every box by at
#: most 1.66 px, and made boxes on 2 pages, all scored within 0.05 of box_thresh, appear or
#: vanish (docs/export.md). INT8 is checked on labelled data only.
TOLERANCES = {"fp32": (1e-4, 0.0, 0.0), "fp16": (1e-2, 3.0, 0.05)}

#: ONNX opsets the TorchScript exporter dbtk uses can write for a DBNet: up to its maximum
#: (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, 20 in torch 2.x), from 9 (below it nearest
#: upsampling has no ONNX form). tests/test_cli.py checks this against the installed torch.
OPSETS = (9, 20)

#: INT8 calibration images taken by default, spread evenly over the given images or the training split.
CALIBRATION_IMAGES = 32


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
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="ONNX: compute in float16 (GPU serving); input and output stay uint8 and float32.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="ONNX: INT8 static quantization for CPUs, calibrated on --calibrate images.")
@click.option("--calibrate", multiple=True, type=click.Path(), help="Images (files, folders, globs) to calibrate INT8 on (default: the recipe's training split).")
@click.option("--calibrate-count", type=click.IntRange(1, 10_000), default=CALIBRATION_IMAGES, show_default=True,
              help="Calibrate on at most this many of them, spread evenly.")
@click.option("--check", is_flag=True, help="Run the export on images and compare with the checkpoint (exit 1 on a mismatch).")
@click.option("--images", multiple=True, type=click.Path(), help="Images (files, folders, globs) for --check (default: 4 of the recipe's validation split).")
@click.option("--data", type=click.Path(exists=True, file_okay=False), help="With --check: a labelled ICDAR2015 split; compare hmean and latency of the export and the checkpoint.")
@click.option("--max-drop", type=FiniteFloatRange(0, 100), default=1.0, show_default=True,
              help="With --data: the largest hmean drop (points) the check accepts.")
def export(
    checkpoint: str, out: str, fmt: str | None, opset: int, dynamic: bool, size: int | None, batch: int, precision: str,
    quantize: str | None, calibrate: tuple[str, ...], calibrate_count: int, check: bool, images: tuple[str, ...],
    data: str | None, max_drop: float,
) -> None:
    """Export CHECKPOINT for deployment; the file carries its recipe, so it needs nothing else to run.

    \b
    dbtk export runs/docs/checkpoints/best.safetensors --out docs.onnx --check
    dbtk export runs/docs/checkpoints/best.safetensors --out docs-int8.onnx --quantize int8 --calibrate my/images --check --data my/val
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
    computes = quantize or precision
    _check_options(fmt, precision, quantize, calibrate, check, images, data)
    if fmt == "onnx":
        from dbtk.infer.onnx_runtime import require

        require("onnx")  # say which extra is missing before the slow part
    reader = None
    if data:
        from dbtk.cli import require_samples
        from dbtk.data.formats import open_split

        reader = open_split(data)
        require_samples(reader, data, "score")
    _ui.step(f"loading {checkpoint} (imports torch)...")
    from dbtk.infer import export as exporting

    if fmt == "onnx":
        calibration = []
        if quantize:
            calibration = _calibration_images(checkpoint, calibrate, calibrate_count)
            _ui.step(f"quantizing to INT8, calibrated on {len(calibration)} images...")
        recipe = exporting.export_onnx(checkpoint, out, opset=opset, dynamic=dynamic, size=size, batch=batch,
                                       precision=computes, calibration=calibration)
    else:
        recipe = exporting.export_bundle(checkpoint, out)
    side = size or recipe.eval.long_side
    shape = f"{batch} × 3 × {side} × {side}" if fmt == "onnx" and not dynamic else "N × 3 × H × W (H, W multiples of 32)"
    megabytes = Path(out).stat().st_size / 2**20
    what = f"{fmt} {computes}" if fmt == "onnx" else fmt
    _ui.console().print(f"[green]✓[/] {what} → {out} ({megabytes:.1f} MiB); input uint8 RGB {shape}, recipe '{recipe.name}' embedded")
    if check and (images or not data):
        _check(checkpoint, out, recipe, images, computes if fmt == "onnx" else "fp32")
    if reader is not None:
        _check_scores(checkpoint, out, reader, max_drop)


def _check_options(fmt: str, precision: str, quantize: str | None, calibrate: tuple[str, ...], check: bool,
                   images: tuple[str, ...], data: str | None) -> None:
    """Refuse combinations that cannot mean what they say, before anything slow runs."""
    from dbtk.errors import DbtkError

    if fmt != "onnx" and (precision != "fp32" or quantize):
        raise DbtkError("--precision and --quantize apply to ONNX exports", hint="name the output .onnx")
    if precision != "fp32" and quantize:
        raise DbtkError(f"--precision {precision} and --quantize {quantize}: pick one", hint="INT8 graphs keep their float parts in fp32")
    if calibrate and not quantize:
        raise DbtkError("--calibrate is for --quantize int8", hint="add --quantize int8, or leave --calibrate out")
    if data and not check:
        raise DbtkError("--data is what --check scores the export on", hint="add --check")
    if quantize and check and not data:
        raise DbtkError("--check of an INT8 export needs --data DIR (labelled images)",
                        hint="its probability maps differ from the checkpoint's by design; the check compares hmean instead")
    if quantize and images:
        raise DbtkError("--images compares probability maps, which INT8 changes by design", hint="check an INT8 export with --data DIR")


def _check(checkpoint: str, out: str, recipe: Recipe, images: tuple[str, ...], precision: str) -> None:
    from rich.table import Table

    from dbtk.cli import _ui
    from dbtk.errors import CheckFailed
    from dbtk.infer.detector import Detector
    from dbtk.infer.export import compare

    tolerance, box_shift, margin = TOLERANCES[precision]
    samples = _check_images(recipe, images)
    results = compare(Detector.from_checkpoint(checkpoint, "cpu"), Detector.load(out, "cpu"), samples, margin)
    table = Table(title=f"{out} vs {checkpoint}", title_justify="left")
    for column in ("image", "input h×w", "max |Δp|", "boxes ckpt", "boxes export", "same boxes", "max box shift px"):
        table.add_column(column, justify="left" if column == "image" else "right")
    for r in results:
        ok, moved = r.max_abs_diff <= tolerance, r.max_box_shift <= box_shift
        table.add_row(r.image, f"{r.input_size[0]}×{r.input_size[1]}", f"[{'green' if ok else 'red'}]{r.max_abs_diff:.2e}[/]",
                      str(r.reference_boxes), str(r.export_boxes), "[green]yes[/]" if r.boxes_identical else "no" if margin else "[red]no[/]",
                      f"[{'green' if moved else 'red'}]{r.max_box_shift:.2f}[/]")
    _ui.console().print(table)
    failed = [r.image for r in results if r.max_abs_diff > tolerance or r.max_box_shift > box_shift or not (margin or r.boxes_identical)]
    boxes = "identical boxes" if not margin else f"boxes within {box_shift:g} px (scores within {margin:g} of box_thresh aside)"
    if failed:
        raise CheckFailed(f"the export differs from the checkpoint on {len(failed)} of {len(results)} images: {', '.join(failed)}",
                          hint=f"{precision} tolerance {tolerance:g} on probabilities and {boxes}; try another --opset, or report it with the table above")
    worst = max(r.max_abs_diff for r in results)
    _ui.console().print(f"[green]✓[/] {len(results)} images: max |Δprob| {worst:.2e} ≤ {tolerance:g}, {boxes}")


def _check_scores(checkpoint: str, out: str, reader: Reader, max_drop: float) -> None:
    """hmean and network latency of the checkpoint (torch) and the export on the same labelled split, on the CPU."""
    from rich.table import Table

    from dbtk.cli import _ui
    from dbtk.errors import CheckFailed
    from dbtk.infer.detector import Detector
    from dbtk.infer.export import score

    exported = Detector.load(out, "cpu")
    precision = getattr(exported.runtime, "precision", "fp32")
    rows = []
    for label, detector in (("checkpoint (torch fp32)", Detector.from_checkpoint(checkpoint, "cpu")), (f"export ({precision})", exported)):
        with _ui.progress(f"scoring the {label.split()[0]}", len(reader)) as advance:
            rows.append((label, score(detector, reader, advance)))
    table = Table(title=f"{out} vs {checkpoint} on {len(reader)} labelled images, CPU", title_justify="left")
    for column in ("model", "precision", "recall", "hmean", "network ms/image"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, result in rows:
        table.add_row(label, f"{result.precision:.4f}", f"{result.recall:.4f}", f"{result.hmean:.4f}", f"{result.ms_per_image:.0f}")
    _ui.console().print(table)
    reference, candidate = rows[0][1], rows[1][1]
    drop = 100 * (reference.hmean - candidate.hmean)
    speed = reference.ms_per_image / candidate.ms_per_image if candidate.ms_per_image else float("inf")
    summary = f"hmean {candidate.hmean:.4f} vs {reference.hmean:.4f} ({-drop:+.2f} points), {speed:.2f}× the checkpoint's speed"
    if drop > max_drop:
        raise CheckFailed(f"the export loses {drop:.2f} hmean points, more than --max-drop {max_drop:g}: {summary}",
                          hint="export fp32 (or fp16 for GPUs), or calibrate on images like the ones it will see (--calibrate)")
    _ui.console().print(f"[green]✓[/] {summary}; within --max-drop {max_drop:g}")


def _calibration_images(checkpoint: str, paths: tuple[str, ...], count: int) -> list[np.ndarray]:
    """RGB arrays to calibrate INT8 on: ``count`` of the given images, or of the recipe's training split, spread
    evenly (a split sorted by name often groups one kind of page together)."""
    from dbtk.errors import DbtkError
    from dbtk.io.checkpoint import read_weights

    recipe = read_weights(checkpoint)[1]
    if not paths and recipe.data.train is None:
        raise DbtkError("--quantize int8 needs calibration images: the checkpoint's recipe has no data.train", hint="pass --calibrate DIR")
    return [image for _, image in _named_images(paths, recipe, "train", count, "--calibrate")]


def _check_images(recipe: Recipe, images: tuple[str, ...], count: int = 4) -> list[tuple[str, np.ndarray]]:
    """Named RGB arrays: the given files, or the first few of the recipe's validation split."""
    from dbtk.errors import DbtkError

    if not images and recipe.data.val is None:
        raise DbtkError("--check needs images: the checkpoint's recipe has no data.val", hint="pass --images PATH")
    return _named_images(images, recipe, "val", count, "--images", spread=False)


def _named_images(paths: tuple[str, ...], recipe: Recipe, split: str, count: int, option: str, spread: bool = True) -> list[tuple[str, np.ndarray]]:
    """Named RGB arrays from ``paths`` (files, folders, globs) or, without paths, from the recipe's ``split``:
    ``count`` of them spread evenly, or (``spread`` false) every given file or the split's first ``count``. An
    image that cannot be read is said and left out, as predict and eval do; none readable is an error."""
    from dbtk.cli import _ui
    from dbtk.data.images import ImageError, read_image
    from dbtk.errors import DbtkError

    what = option.lstrip("-")
    loaders: list[Callable[[], tuple[str, np.ndarray]]]
    if paths:
        from dbtk.data.formats import image_files

        files = image_files(paths)
        loaders = [lambda path=path: (path.name, read_image(path).image) for path in (_pick(files, count) if spread else files)]
    else:
        from dbtk.registry import registry

        try:
            reader = registry.build("dataset", recipe.data.format.as_table(), split=getattr(recipe.data, split))
        except DbtkError as exc:
            raise DbtkError(f"{what} cannot read the recipe's {split} split ({exc.message})", hint=f"pass {option} PATH") from None
        indices = _pick(list(range(len(reader))), count) if spread else list(range(min(count, len(reader))))
        loaders = [lambda i=i: (reader.name(i), reader.load(i).decoded.image) for i in indices]
    named, unreadable = [], 0
    for load in loaders:
        try:
            named.append(load())
        except ImageError as exc:
            _ui.warn(f"{option}: skipped {exc}")
            unreadable += 1
    if not named:
        where = "the given paths" if paths else f"the recipe's {split} split"
        raise DbtkError(f"{what} found no readable image in {where}" + (f" ({unreadable} unreadable)" if unreadable else ""),
                        hint=f"pass readable images with {option} PATH")
    return named


def _pick(items: list[T], count: int) -> list[T]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]
