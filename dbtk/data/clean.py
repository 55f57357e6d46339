"""Scan a dataset for problems and write a repaired copy — the library behind ``dbtk clean-data``.

The source is only ever read. Every image goes through the same decoding and the same label path as training
(:func:`dbtk.data.labels.prepare`), so what clean-data reports is exactly what training would skip or change.
It works with any registered reader (:class:`dbtk.data.reader.Reader`).
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

from dbtk.data.images import ImageError
from dbtk.data.labels import prepare
from dbtk.data.reader import Problem, Reader

#: How many examples of each problem category the report and table keep.
EXAMPLES_PER_CATEGORY = 5


@dataclass
class ImageResult:
    """What scanning one image found, and the repaired labels to write."""

    name: str
    label_file: str = ""
    image_problem: tuple[str, str] | None = None  # (reason, detail) when the image is unusable
    rotated: int = 1  # EXIF orientation that was applied
    polygons: list[np.ndarray] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    ignore: list[bool] = field(default_factory=list)
    findings: list[tuple[str, int | None, str, bool]] = field(default_factory=list)  # (reason, line, detail, dropped)


def scan_image(reader: Reader, index: int, min_size: float = 0.0) -> ImageResult:
    """Decode one image and prepare its labels exactly as training does, recording every change."""
    result = ImageResult(reader.name(index))
    try:
        sample = reader.load(index)
    except ImageError as exc:
        result.image_problem = (exc.reason, str(exc))
        return result
    result.label_file = sample.label_file
    result.rotated = sample.decoded.orientation
    labels = prepare(sample, reader.exif, min_size=min_size)
    for finding in labels.findings:
        points = sample.annotations[finding.index].points
        result.findings.append((finding.reason.value, finding.line, _short(points), finding.dropped))
    if labels.skip:
        result.image_problem = (labels.skip, f"{sample.name}: none of its {len(sample.annotations)} polygons is usable")
        return result
    result.polygons, result.texts, result.ignore = labels.polygons, labels.texts, labels.ignore
    if sample.decoded.orientation != 1:
        result.findings.append(("exif_rotated", None, f"EXIF orientation {sample.decoded.orientation} applied", False))
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

    def add_result(self, result: ImageResult) -> None:
        self.images += 1
        for reason, line, detail, dropped in result.findings:
            where = f"{result.label_file or result.name}:{line}" if line is not None else result.name
            self.note(reason, f"{where}: {detail}")
            if dropped:
                self.dropped.append({"image": result.name, "file": result.label_file, "line": line, "reason": reason, "points": detail})
        if result.image_problem is not None:
            reason, detail = result.image_problem
            self.note(reason, detail)
            self.unusable_images.append({"image": result.name, "reason": reason, "detail": detail})
            return
        self.usable_images += 1
        self.polygons_kept += len(result.polygons)

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
    """Writes the repaired copy: receipt JSON for a receipt-JSON source, ICDAR2015 folders for any other reader."""

    def __init__(self, destination: Path, format_name: str) -> None:
        self.destination = destination
        self.format = "receipt-json" if format_name == "receipt-json" else "icdar2015"
        self.images = destination / "images"
        self.labels = destination / "gts"
        self.images.mkdir(parents=True, exist_ok=True)
        if self.format == "icdar2015":
            self.labels.mkdir(exist_ok=True)
        self.json_images: dict[str, Any] = {}

    def add(self, reader: Reader, index: int, result: ImageResult) -> None:
        if result.image_problem is not None:
            return
        name, source = reader.name(index), reader.source(index)
        target = self.images / name
        if result.rotated == 1 and source is not None:
            shutil.copyfile(source, target)
        else:  # generated pixels, or upright pixels without the EXIF tag so every tool sees what the labels describe
            import cv2

            image = reader.load(index).decoded.image
            cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if self.format == "icdar2015":
            lines = [
                ",".join(str(int(round(v))) for v in quad.ravel()) + "," + ("###" if ign else text)
                for quad, text, ign in zip(map(_as_quad, result.polygons), result.texts, result.ignore, strict=True)
            ]
            (self.labels / f"gt_{Path(name).stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        else:
            words = {
                f"{i + 1:04d}": {"points": np.round(p, 2).tolist(), **({"transcription": "###"} if ign else {})}
                for i, (p, ign) in enumerate(zip(result.polygons, result.ignore, strict=True))
            }
            self.json_images[name] = {"words": words}

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
    reader: Reader,
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


_worker_state: tuple[Reader, float] | None = None


def _init_worker(reader: Reader, min_size: float) -> None:
    global _worker_state
    _worker_state = (reader, min_size)


def _scan_in_worker(index: int) -> ImageResult:
    assert _worker_state is not None
    reader, min_size = _worker_state
    return scan_image(reader, index, min_size)
