"""``dbtk predict``: detect text in images with a checkpoint; JSON (and optionally ICDAR txt) per image."""

from __future__ import annotations

import click

from dbtk.cli import ExistingPath


def _tile_side(_ctx: click.Context, _param: click.Parameter, value: int | None) -> int | None:
    """``--tile`` feeds ``eval.tile``: refuse here, as a usage error, what the recipe would refuse."""
    from dbtk.recipe import MIN_TILE

    if value is not None and value % 32:
        raise click.BadParameter(f"{value} is not a multiple of 32 (0 turns tiling off)")
    if value and value < MIN_TILE:
        raise click.BadParameter(f"{value} is below {MIN_TILE}: tiles that small see little context and take many forwards (0 turns tiling off)")
    return value


@click.command()
@click.argument("checkpoint", type=ExistingPath(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", default="predictions", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--format", "out_format", type=click.Choice(["json", "icdar", "receipt-json"]), default="json", show_default=True,
              help="json: NAME.json per image; icdar: res_NAME.txt per image (x1,y1,...,score); receipt-json: one predictions.json in the competition shape.")
@click.option("--vis", is_flag=True, help="Also write NAME_vis.jpg overlays.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=None, help="Images per batch (default: the recipe's eval.batch_size); on a CPU at most 4 x 256² pixels go through one forward pass.")
@click.option("--tile", type=click.IntRange(0, 8192), default=None, callback=_tile_side, metavar="PX",
              help="Detect in overlapping tiles of PX (a multiple of 32, e.g. 1024) stitched into one page, at the recipe's "
                   "eval.tile_scale (native scale by default) instead of resizing: small text on large scans. 0 = off "
                   "(default: the recipe's eval.tile).")
def predict(
    checkpoint: str, images: tuple[str, ...], out_dir: str, out_format: str, vis: bool, device: str, batch_size: int | None,
    tile: int | None,
) -> None:
    """Detect text in IMAGES (files, folders or globs) with CHECKPOINT.

    The model is loaded once; images that cannot be read are reported and skipped.
    """
    from pathlib import Path

    from dbtk.cli import _ui
    from dbtk.data.formats import image_files
    from dbtk.errors import DbtkError

    paths = image_files(images)
    names = _output_names(paths)
    out = Path(out_dir)
    if any(path.parent.resolve() == out.resolve() for path in paths):  # a second run would read the first's overlays
        raise DbtkError(f"--out {out.resolve()} holds input images: dbtk never writes among its inputs",
                        hint="choose an --out folder of its own, e.g. --out predictions")
    out.mkdir(parents=True, exist_ok=True)
    _ui.step(_ui.loading_message(checkpoint))

    import cv2

    from dbtk.data.images import ImageError, read_image
    from dbtk.infer.detector import Detector
    from dbtk.infer.evaluate import detections_json, draw_overlay, icdar_lines, receipt_words, write_json

    detector = Detector.load(checkpoint, device=device)
    if tile is not None:
        from dbtk import recipe as recipes

        overlap = min(detector.recipe.eval.tile_overlap, tile // 2)  # the recipe's overlap, as far as the tile allows
        if tile and overlap < detector.recipe.eval.tile_overlap:
            _ui.step(f"tiles of {tile} px overlap by {overlap} px (the recipe's eval.tile_overlap {detector.recipe.eval.tile_overlap} is more than half a tile)")
        detector.configure(recipes.with_overrides(detector.recipe, [f"eval.tile={tile}", f"eval.tile_overlap={overlap}"]))
    receipt: dict = {}
    failed = 0

    def readable():  # noqa: ANN202 - (path, image) pairs; unreadable images are reported and skipped
        nonlocal failed
        for path in paths:
            try:
                yield path, read_image(path).image
            except ImageError as exc:
                _ui.warn(str(exc))
                failed += 1
                advance()

    with _ui.progress("predicting", len(paths)) as advance:
        for path, image, detections in detector.detect_stream(readable(), batch_size):  # batched: --batch-size
            advance()
            stem, name = names[path]
            if out_format == "json":
                write_json(out / f"{stem}.json", detections_json(name, (image.shape[1], image.shape[0]), detections))
            elif out_format == "icdar":
                (out / f"res_{stem}.txt").write_text(icdar_lines(detections), encoding="utf-8")
            else:
                receipt[name] = receipt_words(detections)
            if vis:
                cv2.imwrite(str(out / f"{stem}_vis.jpg"), draw_overlay(image, detections))
    if failed == len(paths):
        raise DbtkError(f"none of the {len(paths)} images could be read", hint="the warnings above say why, image by image")
    if out_format == "receipt-json":
        write_json(out / "predictions.json", {"images": receipt})
    _ui.console().print(f"[green]✓[/] {len(paths) - failed} images → {out}" + (f" ({failed} unreadable)" if failed else ""))



def _output_names(paths: list) -> dict:  # noqa: ANN001 - Path -> (output stem, image name)
    """Each image's output stem and name: its own (``x``, ``x.png``) unless another input shares the stem —
    ``x.png`` beside ``x.jpg``, or ``x.png`` in two folders — whose outputs would overwrite each other's. Those
    are named by their path below the folder they share, file name included (``a_x.png``, ``b_x.png``, ``a_x.jpg``;
    :func:`dbtk.data.labelfiles.unique_names`), and said once."""
    from collections import Counter
    from pathlib import Path

    from dbtk.cli import _ui
    from dbtk.data.labelfiles import unique_names

    unique = unique_names([(path.name, path) for path in paths], clash=lambda name: Path(name).stem)
    stems = Counter(path.stem for path in paths)  # a shared stem is named by its file name (x.png, x.jpg) at least
    names = {path: (path.stem, name) if stems[path.stem] == 1 else (name, name) for path, name in zip(paths, unique, strict=True)}
    renamed = [path for path in paths if stems[path.stem] > 1]
    if renamed:
        _ui.warn(f"{len(renamed)} images share a file stem with another input (e.g. {renamed[0]}): their outputs are "
                 f"named by their path and suffix, e.g. {names[renamed[0]][0]}.json")
    return names
