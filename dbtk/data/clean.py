"""Scan a dataset for problems and write a repaired copy — the library behind ``dbtk clean-data``.

The source is only ever read. Every image goes through the same decoding and polygon repair as training
(:func:`dbtk.data.dataset.clean_annotations`), so what clean-data reports is exactly what training would skip
or change.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dbtk.data.formats import FileReader, Problem
from dbtk.data.images import ImageError
from dbtk.data.polygons import DROPPED, repair

#: How many examples of each problem category the report and table keep.
EXAMPLES_PER_CATEGORY = 5


@dataclass
class ImageResult:
    """What scanning one image found, and the repaired labels to write."""

    name: str
    image_problem: tuple[str, str] | None = None  # (reason, detail) when the image is unusable
    rotated: int = 1  # EXIF orientation that was applied
    polygons: list[np.ndarray] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    ignore: list[bool] = field(default_factory=list)
    findings: list[tuple[str, int | None, str, bool]] = field(default_factory=list)  # (reason, line, detail, dropped)


def scan_image(reader: FileReader, index: int, min_size: float = 0.0) -> ImageResult:
    """Decode one image and repair its polygons exactly as training does, recording every change."""
    record = reader.records[index]
    result = ImageResult(record.name)
    try:
        sample = reader.load(index)
    except ImageError as exc:
        result.image_problem = (exc.reason, str(exc))
        return result
    decoded = sample.decoded
    result.rotated = decoded.orientation
    height, width = decoded.image.shape[:2]
    for annotation, points in zip(sample.annotations, sample.display_points(reader.exif), strict=True):
        fixed = repair(points, width, height, ignore=annotation.ignore, min_size=min_size)
        for reason in fixed.reasons:
            result.findings.append((reason.value, annotation.line, _short(annotation.points), reason in DROPPED))
        if not fixed.dropped:
            result.polygons.append(fixed.points)
            result.texts.append(annotation.text)
            result.ignore.append(fixed.ignore)
    if decoded.orientation != 1:
        result.findings.append(("exif_rotated", None, f"EXIF orientation {decoded.orientation} applied", False))
    return result


def _short(points: np.ndarray) -> str:
    return np.array2string(np.asarray(points).ravel(), precision=1, separator=",", max_line_width=10_000)


@dataclass
class Report:
    source: str
    format: str
    images: int = 0
    usable_images: int = 0
    polygons_kept: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    unusable_images: list[dict[str, str]] = field(default_factory=list)

    @property
    def problem_count(self) -> int:
        return sum(self.counts.values())

    def note(self, category: str, where: str) -> None:
        self.counts[category] += 1
        examples = self.examples.setdefault(category, [])
        if len(examples) < EXAMPLES_PER_CATEGORY:
            examples.append(where)

    def add_problem(self, problem: Problem) -> None:
        self.note(problem.reason, f"{problem.where()}: {problem.detail}")

    def add_result(self, result: ImageResult, label_file: str) -> None:
        self.images += 1
        if result.image_problem is not None:
            reason, detail = result.image_problem
            self.note(reason, detail)
            self.unusable_images.append({"image": result.name, "reason": reason, "detail": detail})
            return
        self.usable_images += 1
        self.polygons_kept += len(result.polygons)
        for reason, line, detail, dropped in result.findings:
            where = f"{label_file}:{line}" if line is not None else f"{result.name}"
            self.note(reason, f"{where}: {detail}")
            if dropped:
                self.dropped.append({"image": result.name, "file": label_file, "line": line, "reason": reason, "points": detail})

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "images": self.images,
            "usable_images": self.usable_images,
            "polygons_kept": self.polygons_kept,
            "problems": dict(sorted(self.counts.items())),
            "problem_total": self.problem_count,
            "examples": self.examples,
            "unusable_images": self.unusable_images,
            "dropped_polygons": self.dropped,
        }


class Writer:
    """Writes the repaired copy in the source's format (ICDAR2015 folders or receipt JSON)."""

    def __init__(self, destination: Path, format_name: str) -> None:
        self.destination = destination
        self.format = format_name
        self.images = destination / "images"
        self.labels = destination / "gts"
        self.images.mkdir(parents=True, exist_ok=True)
        if format_name == "icdar2015":
            self.labels.mkdir(exist_ok=True)
        self.json_images: dict[str, Any] = {}

    def add(self, reader: FileReader, index: int, result: ImageResult) -> None:
        if result.image_problem is not None:
            return
        record = reader.records[index]
        target = self.images / record.name
        if result.rotated == 1:
            shutil.copyfile(record.image_path, target)
        else:  # store upright pixels without the EXIF tag, so every tool sees what the labels describe
            import cv2

            image = reader.load(index).decoded.image
            cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if self.format == "icdar2015":
            lines = [
                ",".join(str(int(round(v))) for v in quad.ravel()) + "," + ("###" if ign else text)
                for quad, text, ign in zip(map(_as_quad, result.polygons), result.texts, result.ignore, strict=True)
            ]
            (self.labels / f"gt_{Path(record.name).stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        else:
            words = {
                f"{i + 1:04d}": {"points": np.round(p, 2).tolist(), **({"transcription": "###"} if ign else {})}
                for i, (p, ign) in enumerate(zip(result.polygons, result.ignore, strict=True))
            }
            self.json_images[record.name] = {"words": words}

    def close(self) -> None:
        if self.format != "icdar2015":
            path = self.destination / "annotations.json"
            path.write_text(json.dumps({"images": self.json_images}, ensure_ascii=False), encoding="utf-8")


def _as_quad(points: np.ndarray) -> np.ndarray:
    """ICDAR2015 lines hold 4 points: polygons with more become their minimum-area rectangle, clockwise from top-left."""
    if len(points) == 4:
        return points
    import cv2

    box = cv2.boxPoints(cv2.minAreaRect(points.astype(np.float32)))
    start = int(np.argmin(box.sum(axis=1)))
    box = np.roll(box, -start, axis=0)
    x, y = box[:, 0], box[:, 1]
    if np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y) < 0:
        box = np.vstack([box[:1], box[1:][::-1]])
    return box


def scan(
    reader: FileReader,
    workers: int,
    min_size: float = 0.0,
) -> Iterator[tuple[int, ImageResult]]:
    """Scan every image, in parallel when ``workers`` > 1; yields results in dataset order."""
    indices = range(len(reader))
    if workers <= 1:
        for index in indices:
            yield index, scan_image(reader, index, min_size)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(reader, min_size)) as pool:
        yield from zip(indices, pool.map(_scan_in_worker, indices, chunksize=4), strict=True)


_worker_state: tuple[FileReader, float] | None = None


def _init_worker(reader: FileReader, min_size: float) -> None:
    global _worker_state
    _worker_state = (reader, min_size)


def _scan_in_worker(index: int) -> ImageResult:
    assert _worker_state is not None
    reader, min_size = _worker_state
    return scan_image(reader, index, min_size)
