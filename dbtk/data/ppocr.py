"""PaddleOCR detection labels, as PPOCRLabel writes them (``Label.txt`` in the image folder) and PaddleOCR's
``SimpleDataSet`` reads them (https://github.com/PaddlePaddle/PaddleOCR, ``doc/doc_en/dataset/ocr_datasets_en.md``
and ``PPOCRLabel/README.md``; don't care as ``DetLabelEncode`` in ``ppocr/data/imaug/label_ops.py`` decides it)::

    images/a.jpg<TAB>[{"transcription": "hello", "points": [[8, 10], [40, 10], [40, 20], [8, 20]], "difficult": false}]

One line per image: its path (as written: relative to the folder above the image folder, where PPOCRLabel puts
it, or to the image folder; else found by file name), a tab, and a JSON list of regions with any number of
points. A transcription ``###`` or ``*`` (PaddleOCR's convention) or ``"difficult": true`` (PPOCRLabel's flag)
marks don't care; other keys (``key_cls``, ``id``, ``linking``) are ignored. An unreadable line is a ``bad_line``
problem: the other lines are still read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbtk.data.formats import DONT_CARE, _check_exif, read_text_lines
from dbtk.data.labelfiles import JSON_ERRORS, as_points, distinct_names, duplicate, image_folder, locate
from dbtk.data.reader import Annotation, FileReader, Problem, Record
from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.recipe import Split

#: Transcriptions PaddleOCR's ``DetLabelEncode`` treats as don't care.
IGNORED_TEXTS = (DONT_CARE, "*")


class PPOCRLabel(FileReader):
    """``split.images``: the image folder; ``split.annotations``: the label file (default: ``IMAGES/Label.txt``)."""

    def __init__(self, split: Split | None = None, exif: str = "stored") -> None:
        super().__init__(exif=_check_exif(exif))
        images = image_folder(split, "ppocr", "a split folder (the images, with PPOCRLabel's Label.txt)")
        path = Path(split.annotations).expanduser() if split and split.annotations else images / "Label.txt"
        if not path.is_file():
            raise DbtkError(f"label file not found: {Path(path).absolute()}", hint="give PaddleOCR's detection label list with --annotations FILE (or annotations = FILE)")
        seen: set[Path] = set()
        for number, line in enumerate(read_text_lines(path, self.problems), start=1):
            if not line.strip():
                continue
            reference, tab, regions = line.partition("\t")
            try:
                entries = json.loads(regions) if tab else None
            except JSON_ERRORS as exc:
                self.problems.append(Problem(str(path), number, "bad_line", f"{reference}: invalid JSON after the tab: {exc}"))
                continue
            if not isinstance(entries, list):
                self.problems.append(Problem(str(path), number, "bad_line", "expected 'IMAGE<TAB>[{\"transcription\": ..., \"points\": ...}, ...]'"))
                continue
            image = locate(reference.strip(), images.parent, images)
            if image is None:
                self.problems.append(Problem(str(path), number, "missing_image", f"{reference} is labelled but not in {images}"))
            elif not duplicate(seen, image, str(path), number, self.problems):
                self.records.append(Record(image.name, image, self._regions(entries, path, number), path))
        distinct_names(self.records)

    def _regions(self, entries: list[Any], path: Path, number: int) -> list[Annotation]:
        annotations = []
        for index, entry in enumerate(entries, start=1):
            points = as_points(entry.get("points")) if isinstance(entry, dict) else None
            if points is None:
                self.problems.append(Problem(str(path), number, "bad_points", f"region {index}: points must be [[x, y], ...]"))
                continue
            text = entry.get("transcription")
            text = text if isinstance(text, str) else ""
            ignore = text.strip() in IGNORED_TEXTS or entry.get("difficult") is True
            annotations.append(Annotation(points, text, ignore, number))
        return annotations


def unwritable_name(name: str) -> str | None:
    """Why a ``PATH<TAB>[...]`` line cannot hold image ``name`` (None when it can): a tab ends the path, a line
    break (anything ``str.splitlines`` splits at) ends the line, and the path is read back stripped."""
    if "\t" in name:
        return "a tab ends the path in a PPOCR line"
    if len(f"a{name}a".splitlines()) > 1:
        return "a line break ends a PPOCR line"
    if name != name.strip():
        return "PPOCR paths are read back without leading or trailing spaces"
    return None
