"""COCO instances JSON (https://cocodataset.org/#format-data, "Object Detection" annotations)::

    {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 320.0,
                      "bbox": [8, 10, 32, 10], "segmentation": [[8, 10, 40, 10, 40, 20, 8, 20]]}],
     "categories": [{"id": 1, "name": "text"}]}

Every annotation is text, whatever its category. Polygon segmentations are read (each polygon of a multi-part
segmentation is a region); an annotation without one is its ``bbox`` (box-only labels become rectangles); an RLE
segmentation (a mask: ``{"counts", "size"}``) is read as its ``bbox`` and reported (``rle_segmentation``).
``iscrowd: 1`` (COCO's own "do not score") and ``ignore: 1`` (MMDetection's) mark don't care. A ``text`` key
(what dbtk writes, as MMOCR's COCO files do) or COCO-Text's ``utf8_string`` is the transcription. ``file_name``
is looked up under the image folder, then by its file name there; an image listed without annotations is a page
without text.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbtk.data.formats import _check_exif
from dbtk.data.labelfiles import annotation_file, as_pairs, box, distinct_names, duplicate, file_name, load_document, locate, require_entries
from dbtk.data.reader import Annotation, FileReader, Problem, Record
from dbtk.errors import DbtkError

if TYPE_CHECKING:
    import numpy as np

    from dbtk.recipe import Split

EXPECTED = "COCO instances JSON: {'images': [{'id', 'file_name'}], 'annotations': [{'image_id', 'segmentation' or 'bbox'}]}"


class COCO(FileReader):
    """``split.images``: the image folder; ``split.annotations``: the instances JSON file."""

    def __init__(self, split: Split | None = None, exif: str = "stored") -> None:
        super().__init__(exif=_check_exif(exif))
        images, path = annotation_file(split, "coco", "instances.json")
        document = load_document(path, EXPECTED)
        listed = document.get("images") if isinstance(document, dict) else None
        labels = document.get("annotations") if isinstance(document, dict) else None
        if not isinstance(listed, list) or not isinstance(labels, list):
            raise DbtkError(f"{path}: expected {EXPECTED}", hint="an 'images' list and an 'annotations' list")
        require_entries(listed, path, "its 'images' list", EXPECTED)
        regions = self._regions(labels, path)
        where = f"{path}#images"
        seen: set[Path] = set()
        for number, entry in enumerate(listed, start=1):
            image_id = entry.get("id") if isinstance(entry, dict) else None
            reference = entry.get("file_name") if isinstance(entry, dict) else None
            if not _is_id(image_id) or not isinstance(reference, str) or not reference:
                self.problems.append(Problem(where, number, "bad_entry", "an image needs an 'id' and a 'file_name'"))
                continue
            image = locate(reference, images)
            if image is None:
                self.problems.append(Problem(where, number, "missing_image", f"{reference} is listed but not in {images}"))
            elif not duplicate(seen, image, where, number, self.problems):
                self.records.append(Record(file_name(reference), image, regions.pop(image_id, []), path))
                continue
            regions.pop(image_id, None)  # its annotations go with it: not reported again as orphans
        distinct_names(self.records)
        for image_id, orphans in regions.items():
            for orphan in orphans:
                self.problems.append(Problem(f"{path}#annotations", orphan.line, "bad_entry", f"image_id {image_id!r} is not in 'images'"))

    def _regions(self, labels: list[Any], path: Path) -> dict[Any, list[Annotation]]:
        """Every annotation's regions, by image id; ``line`` is the annotation's place in the list (1-based)."""
        where = f"{path}#annotations"
        regions: dict[Any, list[Annotation]] = defaultdict(list)
        for number, label in enumerate(labels, start=1):
            image_id = label.get("image_id") if isinstance(label, dict) else None
            if not _is_id(image_id):
                self.problems.append(Problem(where, number, "bad_entry", "an annotation needs an 'image_id'"))
                continue
            text = next((t for t in (label.get("text"), label.get("utf8_string")) if isinstance(t, str)), "")
            ignore = bool(label.get("iscrowd")) or bool(label.get("ignore"))
            outlines = self._outlines(label, where, number)
            regions[image_id] += [Annotation(points, text, ignore, number) for points in outlines]
        return regions

    def _outlines(self, label: dict[str, Any], where: str, number: int) -> list[np.ndarray]:
        segmentation = label.get("segmentation")
        if isinstance(segmentation, list) and segmentation:
            parts = segmentation if isinstance(segmentation[0], list) else [segmentation]  # a flat list: one polygon
            outlines = [as_pairs(part) for part in parts]
            if all(points is not None for points in outlines):
                return outlines
            self.problems.append(Problem(where, number, "bad_points", "segmentation polygons must be [x1, y1, x2, y2, ...]"))
            return [points for points in outlines if points is not None]
        bbox = as_pairs(label.get("bbox"))
        if bbox is None or len(bbox) != 2:
            self.problems.append(Problem(where, number, "bad_points", "no polygon segmentation and no bbox [x, y, width, height]"))
            return []
        if isinstance(segmentation, dict):
            self.problems.append(Problem(where, number, "rle_segmentation", "an RLE mask: read as its bbox"))
        (x, y), (width, height) = bbox
        return [box(x, y, x + width, y + height)]


def _is_id(value: object) -> bool:
    """COCO ids are numbers or strings; anything else cannot key images to their annotations."""
    return isinstance(value, int | float | str) and not isinstance(value, bool)
