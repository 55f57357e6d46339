"""Scan a dataset for problems and write a repaired copy — the library behind ``dbtk clean-data`` and
``dbtk convert`` (a copy in another format is a repaired copy written by the same :class:`Writer`).

The source is only ever read. Every image goes through the same decoding and the same label path as training
(:func:`dbtk.data.labels.prepare`), so what clean-data reports is exactly what training would skip or change.
It works with any registered reader (:class:`dbtk.data.reader.Reader`).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dbtk.data.formats import DONT_CARE
from dbtk.data.images import ImageError
from dbtk.data.labels import prepare
from dbtk.data.polygons import signed_area
from dbtk.data.reader import Problem, Reader
from dbtk.errors import DbtkError, did_you_mean

if TYPE_CHECKING:
    from dbtk.recipe import Split

#: How many examples of each problem category the report and table keep.
EXAMPLES_PER_CATEGORY = 5


@dataclass
class ImageResult:
    """What scanning one image found, and the repaired labels to write."""

    name: str
    label_file: str = ""
    image_problem: tuple[str, str] | None = None  # (reason, detail) when the image is unusable
    size: tuple[int, int] = (0, 0)  # (width, height) of the decoded, upright image the labels refer to
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
    result.size = (labels.image.shape[1], labels.image.shape[0])
    for finding in labels.findings:
        points = sample.annotations[finding.index].points
        result.findings.append((finding.reason.value, finding.line, _short(points), finding.dropped))
    if labels.skip:
        result.image_problem = (labels.skip, f"{sample.name}: {labels.skip_detail}")
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


#: The formats :class:`Writer` writes (``dbtk convert --to``).
WRITABLE = ("coco", "icdar2015", "labelme", "ppocr", "receipt-json")
#: The version written into LabelMe files (LabelMe reads older and newer files alike).
LABELME_VERSION = "5.5.0"


class Writer:
    """Writes a dataset copy: the images (copied byte for byte; upright re-encoded when EXIF-rotated, encoded when
    generated or embedded in a label file) and their repaired labels in one of :data:`WRITABLE`.

    Every coordinate is written as the shortest decimal that reads back as the float32 the label path produced, so
    reading the copy gives back exactly the polygons and don't-care flags that were written, whatever the format.
    clean-data names only its source's format (receipt JSON is written back as receipt JSON, every other reader as
    ICDAR2015 folders); ``dbtk convert`` names the ``output`` format.
    """

    def __init__(self, destination: Path, format_name: str, output: str | None = None) -> None:
        self.format = output or ("receipt-json" if format_name == "receipt-json" else "icdar2015")
        if self.format not in WRITABLE:
            raise DbtkError(f"cannot write format '{self.format}'{did_you_mean(self.format, WRITABLE)}", hint=f"dbtk writes {', '.join(WRITABLE)}")
        self.destination = destination
        self.images = destination / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        if self.format == "icdar2015":
            (destination / "gts").mkdir(exist_ok=True)
        #: Polygons of more than 4 points written as their minimum-area rectangle: ICDAR2015 lines hold 4 points.
        self.squashed = 0
        self.receipt: dict[str, Any] = {}
        self.coco: dict[str, list[Any]] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "text"}]}
        self.ppocr: list[str] = []
        self._labels = {"coco": self._coco, "icdar2015": self._icdar, "labelme": self._labelme, "ppocr": self._ppocr, "receipt-json": self._receipt}[self.format]

    def split(self) -> Split:
        """Where the copy's images and labels are, as a recipe's ``data.train`` names them for ``self.format``."""
        from dbtk.recipe import Split

        if self.format in ("coco", "receipt-json"):
            return Split(str(self.images), str(self.destination / "annotations.json"))
        return Split(str(self.destination if self.format == "icdar2015" else self.images))

    def refuse(self, result: ImageResult) -> None:
        """Mark an image whose name the output format cannot hold (a tab or a line break in a PPOCR path) as
        unusable, ``unwritable_name``: counted and reported with the others and left out of the copy, where it would
        write a line that reads back as something else (or breaks its neighbours)."""
        from dbtk.data import ppocr

        why = ppocr.unwritable_name(result.name) if self.format == "ppocr" else None
        if why is not None and result.image_problem is None:
            result.image_problem = ("unwritable_name", f"{result.name!r}: {why}; rename the image to convert it")

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
        self._labels(name, result)

    def close(self) -> None:
        """Write the formats that keep every image's labels in one file."""
        if self.format == "receipt-json":
            _write_json(self.destination / "annotations.json", {"images": self.receipt})
        elif self.format == "coco":
            _write_json(self.destination / "annotations.json", self.coco)
        elif self.format == "ppocr":
            (self.images / "Label.txt").write_text("".join(f"{line}\n" for line in self.ppocr), encoding="utf-8")

    def _regions(self, result: ImageResult) -> Iterator[tuple[list[list[float]], str, bool]]:
        """Each kept polygon as exact ``[[x, y], ...]``, its text and its don't-care flag."""
        for polygon, text, ignore in zip(result.polygons, result.texts, result.ignore, strict=True):
            yield [[float(_coordinate(x)), float(_coordinate(y))] for x, y in polygon], text, ignore

    def _icdar(self, name: str, result: ImageResult) -> None:
        lines = []
        for polygon, text, ignore in zip(result.polygons, result.texts, result.ignore, strict=True):
            self.squashed += len(polygon) != 4
            coordinates = ",".join(_coordinate(v) for v in _as_quad(polygon).ravel())
            lines.append(f"{coordinates},{DONT_CARE if ignore else ' '.join(text.splitlines())}")
        (self.destination / "gts" / f"gt_{Path(name).stem}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    def _receipt(self, name: str, result: ImageResult) -> None:
        words = {}
        for number, (points, text, ignore) in enumerate(self._regions(result), start=1):
            words[f"{number:04d}"] = {"points": points, **({"transcription": DONT_CARE if ignore else text} if ignore or text else {})}
        self.receipt[name] = {"words": words}

    def _coco(self, name: str, result: ImageResult) -> None:
        image_id = len(self.coco["images"]) + 1
        self.coco["images"].append({"id": image_id, "file_name": name, "width": result.size[0], "height": result.size[1]})
        for points, text, ignore in self._regions(result):
            array = np.asarray(points)
            (left, top), (right, bottom) = array.min(axis=0), array.max(axis=0)
            self.coco["annotations"].append({
                "id": len(self.coco["annotations"]) + 1, "image_id": image_id, "category_id": 1, "iscrowd": int(ignore),
                "segmentation": [array.ravel().tolist()], "area": signed_area(array),
                "bbox": [float(left), float(top), float(right - left), float(bottom - top)], "text": text,
            })

    def _labelme(self, name: str, result: ImageResult) -> None:
        shapes = [
            {"label": DONT_CARE if ignore else text, "points": points, "group_id": None, "description": "", "shape_type": "polygon", "flags": {}}
            for points, text, ignore in self._regions(result)
        ]
        document = {"version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": name, "imageData": None,
                    "imageHeight": result.size[1], "imageWidth": result.size[0]}
        _write_json(self.images / f"{Path(name).stem}.json", document)

    def _ppocr(self, name: str, result: ImageResult) -> None:
        regions = [{"transcription": DONT_CARE if ignore else text, "points": points, "difficult": ignore} for points, text, ignore in self._regions(result)]
        self.ppocr.append(f"{self.images.name}/{name}\t{json.dumps(regions, ensure_ascii=False)}")


def _coordinate(value: float) -> str:
    """The shortest decimal that reads back as the same float32: exact, and as short as the value allows."""
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")


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


def scan_split(
    reader: Reader,
    source: str,
    format_name: str,
    workers: int,
    min_size: float = 0.0,
    writer: Writer | None = None,
    on_image: Callable[[], None] | None = None,
) -> Report:
    """Everything between opening a split and printing: what indexing found, then every image scanned into one
    :class:`Report` and handed to ``writer`` (then closed), so clean-data and convert count alike."""
    report = Report(source=source, format=format_name)
    for problem in reader.problems:
        report.add_problem(problem)
    for index, result in scan(reader, workers, min_size):
        if writer is not None:
            writer.refuse(result)
        report.add_result(result)
        if writer is not None:
            writer.add(reader, index, result)
        if on_image is not None:
            on_image()
    if writer is not None:
        writer.close()
    return report


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
