"""Label Studio's JSON export (https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks, and
the result formats of https://labelstud.io/tags/rectanglelabels and https://labelstud.io/tags/polygonlabels)::

    [{"id": 1, "data": {"image": "/data/upload/1/6a1b2c3d-page.jpg"},
      "annotations": [{"was_cancelled": false, "result": [
        {"id": "r1", "type": "rectanglelabels", "original_width": 640, "original_height": 480, "image_rotation": 0,
         "value": {"x": 10.0, "y": 20.0, "width": 30.0, "height": 5.0, "rotation": 0, "rectanglelabels": ["Text"]}},
        {"id": "r1", "type": "textarea", "value": {"x": 10.0, ..., "text": ["hello"]}},
        {"id": "p1", "type": "polygonlabels", "original_width": 640, "original_height": 480,
         "value": {"points": [[10.0, 40.0], [50.0, 40.0], [50.0, 48.0]], "polygonlabels": ["Text"]}}]}]}]

Coordinates are percent of ``original_width`` / ``original_height``. A rectangle is its top-left corner, width and
height, turned by ``rotation`` degrees clockwise about that corner; a polygon is its ``points``. Results that
share an ``id`` are one region (the OCR template stores the transcription as a ``textarea`` result beside the
shape): its text is the ``textarea`` text, and text or a label ``###`` marks it don't care. Per task the first
annotation not cancelled is read (``predictions`` are not labels); older exports' ``completions`` are read the
same way. The image is found in the local image folder by the file name in ``data.image`` (upload URLs
``/data/upload/N/<8 hex>-name.jpg`` match ``name.jpg`` too; local-storage URLs ``?d=path`` by that path's name).
Other region types (keypoints, brushes, ellipses) and regions drawn on an image rotated in the editor are reported,
not guessed. Browsers show photos EXIF-rotated, so ``exif`` defaults to "display".
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from dbtk.data.formats import DONT_CARE, IMAGE_SUFFIXES, _check_exif
from dbtk.data.labelfiles import annotation_file, as_points, box, distinct_names, duplicate, file_name, load_document, locate, require_entries
from dbtk.data.reader import Annotation, FileReader, Problem, Record
from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.recipe import Split

EXPECTED = "Label Studio's JSON export: a list of tasks [{'data': {'image': ...}, 'annotations': [...]}]"
#: The prefix Label Studio gives uploaded files (``6a1b2c3d-name.jpg``).
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
#: Region types that carry no outline (a choice, a rating, a relation): not regions, nothing to report.
NOT_REGIONS = ("choices", "rating", "relation", "taxonomy", "number", "datetime", "pairwise", "ranker")


class LabelStudio(FileReader):
    """``split.images``: the local image folder; ``split.annotations``: the exported JSON file."""

    def __init__(self, split: Split | None = None, exif: str = "display") -> None:
        super().__init__(exif=_check_exif(exif))
        images, path = annotation_file(split, "label-studio", "project-1-export.json")
        tasks = load_document(path, EXPECTED)
        if not isinstance(tasks, list):
            raise DbtkError(f"{path}: expected {EXPECTED}", hint="export the project as 'JSON' (not JSON-MIN, CSV or YOLO)")
        require_entries(tasks, path, "its list of tasks", EXPECTED)
        seen: set[Path] = set()
        for number, task in enumerate(tasks, start=1):
            where = f"{path}#task {task.get('id', number) if isinstance(task, dict) else number}"
            reference = _image_reference(task)
            if reference is None:
                self.problems.append(Problem(where, None, "bad_entry", "no image in 'data' (expected data.image)"))
                continue
            image = next(filter(None, (locate(name, images) for name in _local_names(reference))), None)
            if image is None:
                self.problems.append(Problem(where, None, "missing_image", f"{reference}: no {' or '.join(_local_names(reference))} in {images}"))
                continue
            results = _results(task)
            if results is None:
                self.problems.append(Problem(where, None, "missing_gt", f"{image.name}: no annotation that was not cancelled"))
                continue
            if not duplicate(seen, image, where, None, self.problems):
                self.records.append(Record(image.name, image, self._regions(results, where), path))
        distinct_names(self.records)

    def _regions(self, results: list[Any], where: str) -> list[Annotation]:
        """One annotation per region: the results sharing an ``id`` (shape, labels, transcription) together."""
        regions: dict[str, list[dict[str, Any]]] = {}
        for number, result in enumerate(results, start=1):
            if not isinstance(result, dict) or not isinstance(result.get("value"), dict):
                self.problems.append(Problem(where, number, "bad_entry", "a result must be an object with a 'value'"))
            elif result.get("type") not in NOT_REGIONS:
                key = result.get("id")
                regions.setdefault(f"#{number}" if key is None else str(key), []).append(result)
        annotations = []
        for number, parts in enumerate(regions.values(), start=1):
            points = self._outline(parts, where, number)
            if points is None:
                continue
            text = " ".join(s for part in parts for s in _strings(part["value"].get("text")))
            labels = {s for part in parts for s in _strings(part["value"].get(str(part.get("type"))))}  # e.g. rectanglelabels
            ignore = text.strip() == DONT_CARE or DONT_CARE in labels
            annotations.append(Annotation(points, text, ignore, number))
        return annotations

    def _outline(self, parts: list[dict[str, Any]], where: str, number: int) -> np.ndarray | None:
        """The region's points in pixels, from the first of its results that has a shape (a problem if none does)."""
        shaped = next((p for p in parts if "points" in p["value"] or {"x", "y", "width", "height"} <= p["value"].keys()), None)
        if shaped is None:
            kinds = sorted({str(p.get("type")) for p in parts})
            self.problems.append(Problem(where, number, "unsupported_shape", f"region of type {', '.join(kinds)}: only rectangles and polygons outline text"))
            return None
        size = [shaped.get("original_width"), shaped.get("original_height")]
        if not all(isinstance(s, int | float) and not isinstance(s, bool) and s > 0 for s in size):
            self.problems.append(Problem(where, number, "bad_entry", "original_width and original_height must be positive numbers (they turn percent into pixels)"))
            return None
        if shaped.get("image_rotation") not in (None, 0):
            self.problems.append(Problem(where, number, "unsupported_shape", f"drawn on the image rotated by {shaped['image_rotation']} degrees in the editor"))
            return None
        scale = np.asarray(size, dtype=np.float64) / 100.0
        value = shaped["value"]
        outline = as_points(value["points"]) if "points" in value else _rectangle(value)
        if outline is None:
            self.problems.append(Problem(where, number, "bad_points", "expected points [[x%, y%], ...] or numbers x, y, width, height (and rotation)"))
            return None
        pixels = outline * scale
        return pixels if "points" in value else _rotated(pixels, value)


def _rectangle(value: dict[str, Any]) -> np.ndarray | None:
    """The box (x, y, width, height in percent) as four corners, before its rotation (see :func:`_rotated`)."""
    try:
        x, y, width, height = (float(value[key]) for key in ("x", "y", "width", "height"))
    except (TypeError, ValueError, OverflowError):
        return None
    return box(x, y, x + width, y + height)


def _rotated(corners: np.ndarray, value: dict[str, Any]) -> np.ndarray:
    """Turn a rectangle's pixel corners by ``rotation`` degrees clockwise (y points down) about its top-left
    corner, as Label Studio does: in pixels, since percent of width and of height are different units."""
    try:
        angle = math.radians(float(value.get("rotation") or 0.0))
    except (TypeError, ValueError, OverflowError):
        angle = math.nan  # non-finite corners: the label path drops and reports the region
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (corners - corners[0]) @ turn.T + corners[0]


def _strings(value: object) -> list[str]:
    """A result's list of strings (``text``, ``rectanglelabels`` ...); anything else holds none."""
    return [str(item) for item in value] if isinstance(value, list) else []


def _image_reference(task: object) -> str | None:
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return None
    image = data.get("image")
    if isinstance(image, str) and image:
        return image
    return next((v for v in data.values() if isinstance(v, str) and Path(_local_names(v)[0]).suffix.lower() in IMAGE_SUFFIXES), None)


def _local_names(reference: str) -> list[str]:
    """Names the referenced image may have locally: the URL's file name (or a local-storage ``?d=`` path's), and
    that name without the prefix Label Studio adds to uploads."""
    url = urlsplit(reference)
    stored = parse_qs(url.query).get("d")
    name = file_name(unquote(stored[0] if stored else url.path))
    bare = UPLOAD_PREFIX.sub("", name)
    return [name, bare] if bare != name else [name]


def _results(task: object) -> list[Any] | None:
    """The result list of the task's first annotation that was not cancelled (None when there is none)."""
    annotations = task.get("annotations", task.get("completions")) if isinstance(task, dict) else None
    for annotation in annotations if isinstance(annotations, list) else []:
        if isinstance(annotation, dict) and not annotation.get("was_cancelled") and isinstance(annotation.get("result"), list):
            return annotation["result"]
    return None

