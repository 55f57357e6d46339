"""``dbtk eval``: ICDAR2015 precision / recall / hmean of a checkpoint, or of existing prediction files."""

from __future__ import annotations

import click

from dbtk.cli import ExistingPath

#: The recipe tables ``eval --set`` may change: how the model is run, not what it was trained as.
TUNABLE = ("eval", "postprocess")


@click.command("eval")
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=ExistingPath(file_okay=False), help="Split to score against (ICDAR2015 folder, or images folder with --annotations).")
@click.option("--annotations", type=ExistingPath(), help="Label file (receipt JSON) or label folder.")
@click.option("--format", "format_name", default=None, help="Dataset format (default: icdar2015, or receipt-json with an annotation file).")
@click.option("--pred", "pred_dir", type=ExistingPath(file_okay=False), help="Score these prediction txt files instead of running a checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override the checkpoint recipe's eval/postprocess keys, e.g. postprocess.box_thresh=0.5.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (summary and per-image scores) instead of tables.")
@click.option("--vis", "vis_dir", type=click.Path(file_okay=False), help="Write overlays of misses and false positives for the worst images here.")
@click.option("--worst", type=click.IntRange(0, 100_000), default=5, show_default=True, help="How many of the worst images to list (and draw with --vis).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Write an HTML report here (index.html + images/): summary, sortable per-image table, overlays, precision/recall against box_thresh.")
def eval_command(
    checkpoint: str | None, data: str, annotations: str | None, format_name: str | None, pred_dir: str | None,
    device: str, overrides: tuple[str, ...], as_json: bool, vis_dir: str | None, worst: int, report_dir: str | None,
) -> None:
    """Score CHECKPOINT on --data (or score prediction files given with --pred).

    Metric: ICDAR2015 IoU protocol — one-to-one matches at IoU > 0.5, detections mostly inside '###' regions
    ignored, precision/recall/hmean micro-averaged over the set. Progress goes to stderr, so with --json stdout
    holds the JSON alone.
    """
    from pathlib import Path

    from dbtk.cli import _ui, require_apart, require_samples
    from dbtk.errors import DbtkError

    if bool(checkpoint) == bool(pred_dir):
        raise DbtkError("give a CHECKPOINT or --pred DIR (one of them)", hint="dbtk eval runs/x/checkpoints/best.safetensors --data data/val")
    if report_dir and pred_dir:
        raise DbtkError("--report needs a CHECKPOINT: it sweeps box_thresh over the model's scores", hint="dbtk eval MODEL --data DIR --report DIR")
    require_apart({"--vis": vis_dir, "--report": report_dir}, {"--data": data, "--annotations": annotations, "--pred": pred_dir})
    if overrides:  # an unknown key or a bad value says so first (with a did-you-mean), before anything is loaded
        from dbtk import recipe as recipes

        recipes.with_overrides(recipes.Recipe(), overrides)
    for override in overrides:  # the model's training settings are the checkpoint's: only how it is run may change
        if recipes.override_key(override)[0] not in TUNABLE:
            raise DbtkError(f"--set {override}: eval changes eval.* and postprocess.* keys only (the rest is the checkpoint's)",
                            hint="e.g. --set postprocess.box_thresh=0.5 or --set eval.long_side=1280")
    for folder in (vis_dir, report_dir):  # an unusable output folder is said before the evaluation, not after it
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
    from dbtk.data.formats import open_split

    reader = open_split(data, annotations, format_name)
    require_samples(reader, data, "score")
    if pred_dir:
        from dbtk.infer.evaluate import evaluate_folder

        with _ui.progress("scoring", len(reader)) as advance:
            result = evaluate_folder(Path(pred_dir), reader, advance)
    else:
        _ui.step(_ui.loading_message(checkpoint))
        from dbtk.infer.detector import Detector
        from dbtk.infer.evaluate import evaluate_detector

        detector = Detector.load(checkpoint, device=device)
        if overrides:  # re-tune post-processing or the inference size without retraining (a box_thresh sweep)
            from dbtk import recipe as recipes

            detector.configure(recipes.with_overrides(detector.recipe, overrides))
        box_thresh = detector.postprocess.box_thresh
        if report_dir:  # every box with its score, for the report's box_thresh sweep; scored at box_thresh below
            from dbtk import recipe as recipes

            detector.configure(recipes.with_overrides(detector.recipe, ["postprocess.box_thresh=0"]))
        kept: dict = {}  # with --vis, every image's detections (polygons only): the worst are drawn without a second pass

        def keep(name: str, _image: object, found: object, _score: object) -> None:
            kept[name] = found

        with _ui.progress("evaluating", len(reader)) as advance:
            result = evaluate_detector(detector, reader, advance, keep=keep if vis_dir or report_dir else None)
        if report_dir:
            from dbtk.infer.report import write_report

            settings = {"data": data, "long side": detector.long_side, "thresh": detector.postprocess.thresh}
            result, kept = write_report(Path(report_dir), reader, kept, result, box_thresh, checkpoint, settings)
            _ui.step(f"report written to {Path(report_dir) / 'index.html'}")
        if vis_dir:
            _write_overlays(kept, reader, result, Path(vis_dir), worst)

    if not result.summary.images:  # every image skipped: a 0.0 hmean would read as a verdict on the model
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(result.skipped.items())) or "none usable"
        raise DbtkError(f"nothing scored: no image of {Path(data).resolve()} could be used ({reasons})",
                        hint=f"see why with 'dbtk clean-data {data} --check'")
    if as_json:
        _ui.print_json(result.as_dict())
        return
    _print_summary(result, worst)


def _print_summary(result, worst: int) -> None:  # noqa: ANN001
    from rich.table import Table

    from dbtk.cli import _ui

    s = result.summary
    table = Table(title="ICDAR2015 detection", title_justify="left")
    for column in ("precision", "recall", "hmean", "matched", "gt (care)", "det (care)", "images", "images/s"):
        table.add_column(column, justify="right")
    rate = f"{s.images / result.seconds:.2f}" if result.seconds else "-"
    table.add_row(f"{s.precision:.4f}", f"{s.recall:.4f}", f"[bold]{s.hmean:.4f}[/]", str(s.matched), str(s.gt_care), str(s.det_care), str(s.images), rate)
    _ui.console().print(table)
    if result.images and worst:
        low = Table(title=f"worst {min(worst, len(result.images))} images", title_justify="left")
        for column in ("image", "hmean", "missed", "false positives"):
            low.add_column(column, justify="left" if column == "image" else "right")
        for score in result.worst(worst):
            low.add_row(score.name, f"{score.hmean:.3f}", str(len(score.missed)), str(len(score.false_positives)))
        _ui.console().print(low)
    for problem in result.problems[:10]:
        _ui.warn(f"{problem.where()}: {problem.reason}: {problem.detail}")
    if result.diagnosis:  # the scale looks wrong for this model: name the setting to change
        _ui.warn(result.diagnosis.message)


def _write_overlays(kept, reader, result, folder, worst: int) -> None:  # noqa: ANN001
    from pathlib import Path

    import cv2

    from dbtk.cli import _ui
    from dbtk.data.labels import prepare
    from dbtk.infer.evaluate import draw_overlay

    folder.mkdir(parents=True, exist_ok=True)
    names = {score.name: score for score in result.worst(worst)}
    for index in range(len(reader)):
        if reader.name(index) not in names:
            continue
        sample = reader.load(index)
        labels = prepare(sample, reader.exif)  # the ground truth as scored (indices match the score's misses)
        overlay = draw_overlay(labels.image, kept[sample.name], names[sample.name], labels.polygons, labels.ignore)
        cv2.imwrite(str(folder / f"{Path(sample.name).stem}.jpg"), overlay)
    _ui.step(f"overlays of the {len(names)} worst images written to {folder} (green: matched ground truth, orange: missed, red: false positive)")

