"""Evaluation loops shared by ``dbtk eval`` and validation during training, plus overlays and prediction files."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dbtk.data.formats import FileReader, Problem, RawSample, find_label_file, parse_icdar_file
from dbtk.data.images import ImageError
from dbtk.infer.metrics import ImageScore, Summary, evaluate_image, summarize
from dbtk.infer.postprocess import Detections

if TYPE_CHECKING:
    from dbtk.infer.detector import Detector


@dataclass
class EvalResult:
    summary: Summary
    images: list[ImageScore]
    seconds: float
    problems: list[Problem] = field(default_factory=list)  # unreadable images, missing predictions

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
            "problems": [{"where": p.where(), "reason": p.reason, "detail": p.detail} for p in self.problems],
        }


def ground_truth(sample: RawSample, exif: str) -> tuple[list[np.ndarray], list[bool]]:
    """Labels in the decoded image's coordinates, with their don't-care flags."""
    return sample.display_points(exif), [a.ignore for a in sample.annotations]


def evaluate_detector(
    detector: Detector,
    reader: FileReader,
    on_image: Callable[[], None] | None = None,
    keep: Callable[[str, np.ndarray, Detections, ImageScore], None] | None = None,
) -> EvalResult:
    """Run the detector over a split and score it; images that cannot be read are reported, not fatal."""
    scores, problems = [], list(reader.problems)
    start = time.perf_counter()
    for index in range(len(reader)):
        try:
            sample = reader.load(index)
        except ImageError as exc:
            problems.append(Problem(reader.name(index), None, exc.reason, str(exc)))
            if on_image:
                on_image()
            continue
        gt_points, gt_ignore = ground_truth(sample, reader.exif)
        detections = detector.detect_arrays([sample.decoded.image])[0]
        score = evaluate_image(gt_points, gt_ignore, detections.polygons, name=sample.name)
        scores.append(score)
        if keep:
            keep(sample.name, sample.decoded.image, detections, score)
        if on_image:
            on_image()
    return EvalResult(summarize(scores), scores, time.perf_counter() - start, problems)


def read_prediction_file(path: Path, problems: list[Problem]) -> list[np.ndarray]:
    """A prediction txt: ICDAR lines, with an optional trailing score or transcription column."""
    return [a.points for a in parse_icdar_file(path, problems)]


def evaluate_folder(pred_dir: Path, reader: FileReader, on_image: Callable[[], None] | None = None) -> EvalResult:
    """Score existing prediction files (any detector's) against a split's labels, without decoding images."""
    scores, problems = [], list(reader.problems)
    start = time.perf_counter()
    for record in reader.records:
        gt_points, gt_ignore = [a.points for a in record.annotations], [a.ignore for a in record.annotations]
        path = find_label_file(pred_dir, record.name)
        if path is None:
            problems.append(Problem(str(pred_dir), None, "missing_prediction", f"no prediction file for {record.name}"))
            predictions: list[np.ndarray] = []
        else:
            predictions = read_prediction_file(path, problems)
        scores.append(evaluate_image(gt_points, gt_ignore, predictions, name=record.name))
        if on_image:
            on_image()
    return EvalResult(summarize(scores), scores, time.perf_counter() - start, problems)


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
