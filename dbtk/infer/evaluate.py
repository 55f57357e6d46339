"""Evaluation loops shared by ``dbtk eval`` and validation during training, plus overlays and prediction files.

An evaluation with a model also says, in one line, why it may have found nothing (:func:`diagnose`): text far
smaller or larger at the eval size than at the training scale (→ ``eval.long_side`` or ``eval.tile``), or a near-zero
score at the right scale (→ the post-processing thresholds), with the numbers it measured.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dbtk.data.formats import find_label_file, parse_icdar_file
from dbtk.data.images import ImageError
from dbtk.data.labels import Labels, prepare
from dbtk.data.polygons import repair
from dbtk.data.reader import Problem, Reader
from dbtk.errors import DbtkError
from dbtk.infer.metrics import ImageScore, Summary, evaluate_image, summarize
from dbtk.infer.postprocess import Detections
from dbtk.recipe import MAX_SIDE

if TYPE_CHECKING:
    from dbtk.infer.detector import Detector

#: An hmean below this "found nothing": the diagnosis then always names a setting to try.
NEAR_ZERO = 0.1
#: Text more than this factor outside the training range of heights is too far from what the model saw: DBNet
#: copes with the random scales it trained on, and not much beyond.
SCALE_TOLERANCE = 1.5
#: The tile side the diagnosis suggests (about the docs recipe's eval size: one tile's forward costs about one page's).
SUGGESTED_TILE = 1024
#: Above this eval long side the diagnosis suggests tiling instead, when native scale suits the model: one pass over
#: a larger page holds the network's activations for all of it at once, tiles only for a batch of tiles.
TILE_ABOVE = 2048


@dataclass(frozen=True)
class Diagnosis:
    """Why an evaluation scored (or may score) near nothing: one message naming the setting to change, and the
    numbers behind it — median text heights in network pixels, at the eval size and at the training scale."""

    message: str
    setting: str  # the recipe key to change, e.g. "eval.long_side"
    text_height: float  # median care text height as the network saw it in this evaluation
    trained_on: tuple[float, float]  # the same text's median height at the smallest and largest training scale

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "setting": self.setting, "text_height": self.text_height, "trained_on": list(self.trained_on)}


@dataclass
class EvalResult:
    summary: Summary
    images: list[ImageScore]
    seconds: float
    problems: list[Problem] = field(default_factory=list)  # reader problems, skipped images, missing predictions
    repairs: Counter = field(default_factory=Counter)  # ground-truth polygons changed or dropped, by reason
    skipped: Counter = field(default_factory=Counter)  # images left out of the score, by reason
    diagnosis: Diagnosis | None = None  # set by evaluate_detector when the scale or the score looks wrong

    def worst(self, count: int = 5) -> list[ImageScore]:
        return sorted(self.images, key=lambda s: (s.hmean, -(len(s.missed) + len(s.false_positives))))[:count]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.summary.as_dict(),
            "seconds": self.seconds,
            "images_per_second": self.summary.images / self.seconds if self.seconds else None,
            "per_image": [
                {"image": s.name, "precision": s.precision, "recall": s.recall, "hmean": s.hmean,
                 "matched": s.matched, "gt_care": s.gt_care, "det_care": s.det_care,
                 "missed": len(s.missed), "false_positives": len(s.false_positives)}
                for s in self.images
            ],
            "skipped_images": dict(sorted(self.skipped.items())),
            "repaired_polygons": dict(sorted(self.repairs.items())),
            "problems": [{"where": p.where(), "reason": p.reason, "detail": p.detail} for p in self.problems],
            "diagnosis": self.diagnosis.as_dict() if self.diagnosis else None,
        }


@dataclass
class Scored:
    """One image ready to score: its decoded pixels and its ground truth after the one label path."""

    name: str
    image: np.ndarray
    labels: Labels


def scored_samples(reader: Reader, result: EvalResult) -> Iterator[Scored | None]:
    """Each sample of ``reader`` through :func:`dbtk.data.labels.prepare`; None (and a problem) for one to skip.

    This is where validation, ``dbtk eval`` and ``dbtk eval --pred`` meet the label path: an image training
    would skip is skipped here for the same reason, and no polygon reaches the metric unrepaired. Problems,
    repairs and skipped images are added to ``result``.
    """
    for index in range(len(reader)):
        try:
            sample = reader.load(index)
        except ImageError as exc:
            result.problems.append(Problem(reader.name(index), None, exc.reason, str(exc)))
            result.skipped[exc.reason] += 1
            yield None
            continue
        labels = prepare(sample, reader.exif)
        result.repairs.update(labels.repairs)
        if labels.skip:
            result.problems.append(Problem(sample.name, None, labels.skip, labels.skip_detail))
            result.skipped[labels.skip] += 1
            yield None
            continue
        yield Scored(sample.name, labels.image, labels)


class Stopped(Exception):
    """:func:`evaluate_detector` was told to stop (``stop()`` returned True) before it scored every image."""


def evaluate_detector(
    detector: Detector,
    reader: Reader,
    on_image: Callable[[], None] | None = None,
    keep: Callable[[str, np.ndarray, Detections, ImageScore], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Run the detector over a split and score it; images that cannot be used are counted, never fatal.

    The care ground truth's text heights are measured on the way (at the eval size and at the training scale) for
    :func:`diagnose`, whose finding, if any, is ``result.diagnosis``. ``stop`` is asked before each image is read:
    True ends the pass with :class:`Stopped` (training's Ctrl-C does not wait for a whole validation set).
    """
    result = EvalResult(summarize([]), [], 0.0, list(reader.problems))
    start = time.perf_counter()
    lines: list[np.ndarray] = []  # per image: (native height, network px per image px, image long side) per care line

    def usable() -> Iterator[tuple[Scored, np.ndarray]]:
        for item in scored_samples(reader, result):
            if stop is not None and stop():
                raise Stopped
            if item is not None:
                yield item, item.image
            elif on_image:
                on_image()

    for item, image, detections in detector.detect_stream(usable()):  # batched: eval.batch_size
        score = evaluate_image(item.labels.polygons, item.labels.ignore, detections.polygons, name=item.name)
        result.images.append(score)
        heights = text_heights([p for p, ignore in zip(item.labels.polygons, item.labels.ignore, strict=True) if not ignore])
        height, width = image.shape[:2]
        per_image = (detector.input_scale(width, height), max(width, height))
        lines.append(np.column_stack([heights, *(np.full_like(heights, value) for value in per_image)]))
        if keep:
            keep(item.name, image, detections, score)
        if on_image:
            on_image()
    result.summary, result.seconds = summarize(result.images), time.perf_counter() - start
    if lines:
        result.diagnosis = diagnose(detector, result.summary, np.concatenate(lines))
    return result


def text_heights(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """The height of each text polygon, straight or curved: the width ``h`` of the band of length ``L`` with the
    polygon's area ``A = L·h`` and perimeter ``P = 2(L + h)``, i.e. ``h = P/4 − √(P²/16 − A)``.

    For a rectangle that is its short side (the minimum-area box's short side of a straight line); for an arc-shaped
    band (a curved line) it is the band's thickness, which the short side of its box is not.
    """
    heights = np.zeros(len(polygons))
    for index, points in enumerate(polygons):
        points = np.asarray(points, dtype=np.float64)
        x, y = points[:, 0], points[:, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
        quarter = np.linalg.norm(points - np.roll(points, -1, axis=0), axis=1).sum() / 4
        heights[index] = quarter - np.sqrt(max(quarter * quarter - area, 0.0))
    return heights


def diagnose(detector: Detector, summary: Summary, lines: np.ndarray) -> Diagnosis | None:
    """One finding, or None: text far from the training scale first (the usual reason a fine-tuned model "finds
    nothing"), then a near-zero score at the right scale (the thresholds, or boxes that never overlap the labels).

    ``lines`` holds one row per care ground-truth line: its native height (:func:`text_heights`), the network pixels
    per image pixel of its image in this evaluation, and its image's long side. What the model trained on is the
    same text under the recipe's data settings — crops at native scale, or pages resized to ``data.image_size``,
    times ``data.scale_min``–``scale_max``: a model evaluated on data like its own should see text of those heights.
    """
    if not len(lines):
        return None
    native, scale, side = lines.T
    data, post = detector.recipe.data, detector.postprocess
    low_factor, high_factor = (data.scale_min, data.scale_max) if data.augment else (1.0, 1.0)
    at_training = float(np.median(native * (1.0 if data.crop else data.image_size / side)))
    low, high = at_training * low_factor, at_training * high_factor
    height = float(np.median(native * scale))
    found = {"text_height": round(height, 1), "trained_on": (round(low, 1), round(high, 1))}
    how = f"{data.crop} px crops at native scale" if data.crop else f"pages resized to data.image_size = {data.image_size}"
    at = (f"at eval.tile_scale = {detector.tile_scale:g} (eval.tile = {detector.tile})" if detector.tile
          else f"after the resize to eval.long_side = {detector.long_side}")
    measured = (f"the text is {height:.1f} px high (median of {len(native)} lines) {at}, the model trained on "
                f"{low:.1f}–{high:.1f} px ({how} × {low_factor:g}–{high_factor:g})")
    if height < low / SCALE_TOLERANCE or height > high * SCALE_TOLERANCE:
        wanted = float(np.sqrt(low * high))  # the middle of the training range, on a log scale
        at_native = float(np.median(native))
        native_fits = low / SCALE_TOLERANCE <= at_native <= high * SCALE_TOLERANCE
        tile_scale = 1.0 if native_fits else min(max(round(wanted / at_native, 2), 0.01), 8.0)
        tiled = f"eval.tile_scale = {tile_scale:g}, where it is {at_native * tile_scale:.1f} px"
        if detector.tile:
            return Diagnosis(f"{measured}: set {tiled}", "eval.tile_scale", **found)
        long_side = float(np.median(side * wanted / np.maximum(native, 1e-6)))  # puts the median line at `wanted`
        long_side = int(min(max(round(long_side / 32) * 32, 32), MAX_SIDE))
        if long_side > TILE_ABOVE:
            command = f" (dbtk predict --tile {SUGGESTED_TILE})" if native_fits else ""
            return Diagnosis(f"{measured}: tile instead, at {tiled}: eval.tile = {SUGGESTED_TILE}{command}", "eval.tile", **found)
        return Diagnosis(f"{measured}: set eval.long_side = {long_side}", "eval.long_side", **found)
    if summary.hmean >= NEAR_ZERO:
        return None
    scored = f"hmean {summary.hmean:.3f} with {summary.det_care} boxes for {summary.gt_care} lines"
    right = f"at a text height the model trained on ({height:.1f} px; {low:.1f}–{high:.1f})"
    if summary.det_care < summary.gt_care / 2:
        return Diagnosis(f"{scored}, {right}: lower postprocess.box_thresh ({post.box_thresh:g}) or postprocess.thresh ({post.thresh:g})",
                         "postprocess.box_thresh", **found)
    return Diagnosis(f"{scored}, of which {summary.matched} overlap a line by IoU > 0.5, {right}: check postprocess.unclip_ratio "
                     f"({post.unclip_ratio:g}; boxes too small or too large) and that the labels fit the images (dbtk clean-data --check)",
                     "postprocess.unclip_ratio", **found)


def evaluate_folder(pred_dir: Path, reader: Reader, on_image: Callable[[], None] | None = None) -> EvalResult:
    """Score existing prediction files (any detector's, in any format ``dbtk predict`` writes) against a split."""
    predictions = PredictionFolder(pred_dir)
    names = [reader.name(i) for i in range(len(reader))]
    if names and not any(predictions.has(name) for name in names):
        raise DbtkError(
            f"{pred_dir.resolve()} holds no predictions for any of the {len(names)} images of the split "
            f"(looked for {predictions.patterns(names[0])})",
            hint="point --pred at the folder 'dbtk predict --out' wrote (json, icdar or receipt-json)",
        )
    result = EvalResult(summarize([]), [], 0.0, list(reader.problems))
    start = time.perf_counter()
    for item in scored_samples(reader, result):
        if item is not None:
            written = predictions.read(item.name, result.problems)
            detected = [fixed.points for fixed in map(repair, written) if not fixed.dropped]
            result.images.append(evaluate_image(item.labels.polygons, item.labels.ignore, detected, name=item.name))
        if on_image:
            on_image()
    result.summary, result.seconds = summarize(result.images), time.perf_counter() - start
    return result


class PredictionFolder:
    """Prediction files of one folder, in every layout ``dbtk predict`` writes (and ICDAR result files):

    ``res_NAME.txt`` / ``NAME.txt`` / ``gt_NAME.txt`` (``x1,y1,...,xn,yn[,score]``), ``NAME.json``
    (``{"detections": [{"points": ...}]}``) or one ``predictions.json`` (``{"images": {NAME: {"words": ...}}}``).
    Points are returned as written; the caller repairs them.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.receipt: dict[str, Any] | None = None
        combined = folder / "predictions.json"
        if combined.is_file():
            document = _read_json(combined)
            images = document.get("images") if isinstance(document, dict) else None
            if not isinstance(images, dict):
                raise DbtkError(f"{combined.resolve()}: expected a top-level object with an 'images' table")
            self.receipt = images

    def patterns(self, name: str) -> str:
        stem = Path(name).stem
        return f"res_{stem}.txt, {stem}.txt, gt_{stem}.txt, {stem}.json or predictions.json"

    def has(self, name: str) -> bool:
        return self._file(name) is not None or (self.receipt is not None and name in self.receipt)

    def _file(self, name: str) -> Path | None:
        path = find_label_file(self.folder, name)
        if path is not None:
            return path
        json_path = self.folder / f"{Path(name).stem}.json"
        return json_path if json_path.is_file() else None

    def read(self, name: str, problems: list[Problem]) -> list[np.ndarray]:
        """The points of every detection for image ``name`` (a problem, and none, when there is no file)."""
        path = self._file(name)
        if path is None and self.receipt is not None and name in self.receipt:
            return _points_of(self.receipt[name], "words", str(self.folder / "predictions.json"), problems)
        if path is None:
            problems.append(Problem(str(self.folder), None, "missing_prediction", f"no prediction file for {name}"))
            return []
        if path.suffix == ".txt":
            return [a.points for a in parse_icdar_file(path, problems)]
        return _points_of(_read_json(path, problems), "detections", str(path), problems)


def _read_json(path: Path, problems: list[Problem] | None = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if problems is None:
            raise DbtkError(f"{path.resolve()}: invalid JSON: {exc}") from None
        problems.append(Problem(str(path), None, "bad_prediction", f"invalid JSON: {exc}"))
        return None


def _points_of(entry: Any, key: str, where: str, problems: list[Problem]) -> list[np.ndarray]:
    """Points of a JSON prediction: ``entry[key]`` is a list (per-image JSON) or a table (receipt words)."""
    items = entry.get(key) if isinstance(entry, dict) else None
    if isinstance(items, dict):
        items = list(items.values())
    if not isinstance(items, list):
        if entry is not None:
            problems.append(Problem(where, None, "bad_prediction", f"no '{key}' list"))
        return []
    found = []
    for number, item in enumerate(items, start=1):
        try:
            points = np.asarray(item.get("points") if isinstance(item, dict) else None, dtype=np.float64)
        except (TypeError, ValueError):
            points = np.zeros(0)
        if points.ndim != 2 or points.shape[1] != 2:
            problems.append(Problem(where, number, "bad_prediction", "points must be [[x, y], ...]"))
            continue
        found.append(points)
    return found


# ---------------------------------------------------------------------------------------------- output files
def icdar_lines(detections: Detections) -> str:
    """``x1,y1,...,xn,yn,score`` per detection (integer pixels, as ICDAR result files)."""
    lines = [
        ",".join(str(int(round(v))) for v in polygon.ravel()) + f",{score:.4f}"
        for polygon, score in zip(detections.polygons, detections.scores, strict=True)
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def detections_json(name: str, size: tuple[int, int], detections: Detections) -> dict[str, Any]:
    return {
        "image": name,
        "width": size[0],
        "height": size[1],
        "detections": [
            {"points": np.round(p, 2).tolist(), "score": round(float(s), 4)}
            for p, s in zip(detections.polygons, detections.scores, strict=True)
        ],
    }


def receipt_words(detections: Detections) -> dict[str, Any]:
    """The receipt-competition shape: ``{"words": {"0001": {"points": [[x, y], ...]}}}``."""
    return {"words": {f"{i + 1:04d}": {"points": np.round(p, 1).tolist()} for i, p in enumerate(detections.polygons)}}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def draw_overlay(
    image: np.ndarray,
    detections: Detections,
    score: ImageScore | None = None,
    gt_points: Sequence[np.ndarray] = (),
    gt_ignore: Sequence[bool] = (),
) -> np.ndarray:
    """BGR overlay: detections blue (false positives red), ground truth green (missed orange, don't care grey)."""
    import cv2

    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    missed = set(score.missed) if score else set()
    false_positives = set(score.false_positives) if score else set()
    for i, (points, ignore) in enumerate(zip(gt_points, gt_ignore, strict=True)):
        color = (160, 160, 160) if ignore else (0, 140, 255) if i in missed else (0, 200, 0)
        cv2.polylines(canvas, [np.round(points).astype(np.int32)], True, color, 1, cv2.LINE_AA)
    for i, polygon in enumerate(detections.polygons):
        color = (0, 0, 255) if i in false_positives else (255, 120, 0)
        cv2.polylines(canvas, [np.round(polygon).astype(np.int32)], True, color, 2, cv2.LINE_AA)
    return canvas
