"""Evaluation loops shared by ``dbtk eval`` and validation during training, plus overlays and prediction files."""

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

if TYPE_CHECKING:
    from dbtk.infer.detector import Detector


@dataclass
class EvalResult:
    summary: Summary
    images: list[ImageScore]
    seconds: float
    problems: list[Problem] = field(default_factory=list)  # reader problems, skipped images, missing predictions
    repairs: Counter = field(default_factory=Counter)  # ground-truth polygons changed or dropped, by reason
    skipped: Counter = field(default_factory=Counter)  # images left out of the score, by reason

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
            result.problems.append(Problem(sample.name, None, labels.skip, f"none of its {len(sample.annotations)} polygons is usable"))
            result.skipped[labels.skip] += 1
            yield None
            continue
        yield Scored(sample.name, labels.image, labels)


def evaluate_detector(
    detector: Detector,
    reader: Reader,
    on_image: Callable[[], None] | None = None,
    keep: Callable[[str, np.ndarray, Detections, ImageScore], None] | None = None,
) -> EvalResult:
    """Run the detector over a split and score it; images that cannot be used are counted, never fatal."""
    result = EvalResult(summarize([]), [], 0.0, list(reader.problems))
    start = time.perf_counter()

    def usable() -> Iterator[tuple[Scored, np.ndarray]]:
        for item in scored_samples(reader, result):
            if item is not None:
                yield item, item.image
            elif on_image:
                on_image()

    for item, image, detections in detector.detect_stream(usable()):  # batched: eval.batch_size
        score = evaluate_image(item.labels.polygons, item.labels.ignore, detections.polygons, name=item.name)
        result.images.append(score)
        if keep:
            keep(item.name, image, detections, score)
        if on_image:
            on_image()
    result.summary, result.seconds = summarize(result.images), time.perf_counter() - start
    return result


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
