"""docTR's detection dataset: ``ROOT/images/`` + ``ROOT/labels.json`` (https://github.com/mindee/doctr,
``references/detection/README.md``, read by ``doctr.datasets.DetectionDataset``)::

    {"a.jpg": {"img_dimensions": [64, 48], "img_hash": "<sha256 of the file>",
               "polygons": [[[8, 10], [40, 10], [40, 20], [8, 20]], ...]}}

Points are absolute pixels; dbtk reads any number per polygon. ``polygons`` may also be a table of classes
(``{"words": [...], "artefacts": [...]}``, docTR's multi-class form): every class is text and the class name is
its text. docTR has no don't-care marker; ``img_dimensions`` and ``img_hash`` are not needed (the image is
decoded) and not checked, as docTR does not check them either.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbtk.data.formats import _check_exif, _require_dir
from dbtk.data.labelfiles import as_points, distinct_names, duplicate, file_name, load_document, require_entries
from dbtk.data.reader import Annotation, FileReader, Problem, Record
from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.recipe import Split

EXPECTED = "docTR's labels.json: {'NAME.jpg': {'polygons': [[[x, y], ...], ...]}}"


class Doctr(FileReader):
    """``split.images``: the dataset root (``images/`` + ``labels.json``), or with ``split.annotations`` the image
    folder and the labels file."""

    def __init__(self, split: Split | None = None, exif: str = "stored") -> None:
        super().__init__(exif=_check_exif(exif))
        if split is None:
            raise DbtkError("format 'doctr' needs a split folder (ROOT with images/ and labels.json)")
        root = Path(split.images).expanduser()
        images, path = (root, Path(split.annotations).expanduser()) if split.annotations else (root / "images", root / "labels.json")
        _require_dir(images, "image", None if split.annotations else root, "doctr")
        document = load_document(path, EXPECTED)
        if not isinstance(document, dict):
            raise DbtkError(f"{path}: expected {EXPECTED}")
        require_entries(document, path, "its table of images", EXPECTED)
        seen: set[Path] = set()
        for name, entry in sorted(document.items()):
            image = images / name
            if not image.is_file():
                self.problems.append(Problem(str(path), None, "missing_image", f"{name} is labelled but not in {images}"))
            elif not duplicate(seen, image, f"{path}#{name}", None, self.problems):
                self.records.append(Record(file_name(name), image, self._polygons(entry, f"{path}#{name}"), path))
        distinct_names(self.records)

    def _polygons(self, entry: Any, where: str) -> list[Annotation]:
        polygons = entry.get("polygons") if isinstance(entry, dict) else None
        if isinstance(polygons, list):
            classes = [("", polygons)]
        elif isinstance(polygons, dict):
            classes = [(str(name), members) for name, members in polygons.items()]
        else:
            self.problems.append(Problem(where, None, "bad_entry", "no 'polygons' list (or table of classes)"))
            return []
        flat = [(text, member) for text, members in classes for member in (members if isinstance(members, list) else [members])]
        annotations = []
        for number, (text, member) in enumerate(flat, start=1):
            points = as_points(member)
            if points is None:
                self.problems.append(Problem(where, number, "bad_points", "a polygon must be [[x, y], ...]"))
                continue
            annotations.append(Annotation(points, text, False, number))
        return annotations
