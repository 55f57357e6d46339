"""The curved-text benchmarks' own ground truth: Total-Text and SCUT-CTW1500, per-image label files as their
releases write them. With a split table, ``images`` is the image folder and ``annotations`` the label folder;
without one, ``ROOT/images`` and ``ROOT/gts``.

Total-Text (https://github.com/cs-chan/Total-Text-Dataset, ``Groundtruth/Text/README.md``: columns x, y, text,
orientation with ``#`` = don't care), the ``.txt`` ground truth, ``txt_format/Train/poly_gt_img11.txt`` for
``Images/Train/img11.jpg``::

    x: [[115 503 494 115]], y: [[322 346 426 404]], ornt: [u'm'], transcriptions: [u'nauGHTY']

one region per record, whose arrays numpy may have wrapped onto following lines; ``ornt`` or a transcription
``#`` marks don't care. The per-image line form Total-Text's T3 annotation tool writes and DB's converted
Total-Text ground truth uses, ``x1,y1,x2,y2,...,xn,yn[,text]``, is read too (``#`` or ``###`` = don't care).
(The ``.mat`` copy of the ground truth is not read: use the ``.txt`` release.)

SCUT-CTW1500 (https://github.com/Yuliang-Liu/Curve-Text-Detector, ``data/README.md``): the first release's
``text_label_curve/0001.txt`` lines hold 32 numbers, ``xmin,ymin,xmax,ymax`` of the circumscribed rectangle and
14 ``(dx, dy)`` offsets from its top-left corner; the test labels released later (``000NNNN.txt`` for image
``NNNN.jpg``) hold ``x1,y1,...,x14,y14,####text`` with text ``###`` = don't care; the training labels of that
release are XML (``<box><label>text</label><segs>x1,y1,...,x14,y14</segs></box>``, read from ``NNNN.xml``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dbtk.data.formats import DONT_CARE, _check_exif, pair_label_files, read_text_lines
from dbtk.data.labelfiles import as_pairs
from dbtk.data.reader import Annotation, FileReader, Problem
from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.recipe import Split

#: One Total-Text record: the x and y arrays, the orientation and the transcriptions (Python 2 string reprs).
TOTALTEXT_RECORD = re.compile(
    r"x:\s*\[\[(?P<x>[^\]]*)\]\]\s*,\s*y:\s*\[\[(?P<y>[^\]]*)\]\]\s*,\s*"
    r"ornt:\s*\[(?P<ornt>[^\]]*)\]\s*,\s*transcriptions:\s*\[(?P<text>.*)\]\s*$",
    re.DOTALL,
)
#: Total-Text's don't-care mark, in ``ornt`` and in the transcription.
TOTALTEXT_DONT_CARE = "#"
#: Between a CTW1500 test line's coordinates and its text.
CTW_TEXT_MARK = "####"


def _folders(split: Split | None, name: str) -> tuple[Path, Path]:
    if split is None:
        raise DbtkError(f"format '{name}' needs a split folder (ROOT/images + ROOT/gts, or images and annotations folders)")
    root = Path(split.images).expanduser()
    return (root, Path(split.annotations).expanduser()) if split.annotations else (root / "images", root / "gts")


class TotalText(FileReader):
    """Total-Text: ``imgN.jpg`` with ``poly_gt_imgN.txt`` (or ``gt_imgN.txt``, ``imgN.txt``)."""

    def __init__(self, split: Split | None = None, exif: str = "stored") -> None:
        super().__init__(exif=_check_exif(exif))
        images, labels = _folders(split, "totaltext")
        pair_label_files(self, images, labels, lambda stem: [f"poly_gt_{stem}.txt", f"gt_{stem}.txt", f"{stem}.txt"], parse_totaltext)


class CTW1500(FileReader):
    """SCUT-CTW1500: ``NNNN.jpg`` with ``NNNN.txt``, ``000NNNN.txt`` (test labels) or ``NNNN.xml`` (training labels)."""

    def __init__(self, split: Split | None = None, exif: str = "stored") -> None:
        super().__init__(exif=_check_exif(exif))
        images, labels = _folders(split, "ctw1500")
        names = lambda stem: [f"{stem}.txt", f"000{stem}.txt", f"{stem}.xml", f"gt_{stem}.txt"]  # noqa: E731
        pair_label_files(self, images, labels, names, parse_ctw1500, patterns=("*.txt", "*.xml"))


def parse_totaltext(path: Path, problems: list[Problem]) -> list[Annotation]:
    """A Total-Text label file: ``x: [[...]], y: [[...]], ornt: [...], transcriptions: [...]`` records (a record
    continues on lines that do not start with ``x:``), or lines ``x1,y1,...,xn,yn[,text]``."""
    lines = read_text_lines(path, problems)
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first.startswith("x:"):
        return _comma_lines(lines, str(path), problems)
    records: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line.startswith("x:"):
            records.append((number, line))
        elif line:
            records[-1] = (records[-1][0], f"{records[-1][1]} {line}")
    annotations = []
    for number, record in records:
        match = TOTALTEXT_RECORD.match(record)
        xs, ys = (_numbers(match["x"]), _numbers(match["y"])) if match else (None, None)
        if xs is None or ys is None or len(xs) != len(ys):
            problems.append(Problem(str(path), number, "bad_line", f"expected x: [[...]], y: [[...]], ornt: [...], transcriptions: [...] with as many x as y, got {record[:60]!r}"))
            continue
        text = " ".join(_strings(match["text"]))
        ignore = TOTALTEXT_DONT_CARE in (text.strip(), *_strings(match["ornt"]))
        annotations.append(Annotation(np.stack([xs, ys], axis=1), text, ignore, number))
    return annotations


def _numbers(text: str) -> np.ndarray | None:
    """Numbers separated by spaces (numpy's printing) or commas; None if any is not a number."""
    try:
        return np.asarray(re.split(r"[\s,]+", text.strip()), dtype=np.float64)
    except (ValueError, OverflowError):
        return None


def _strings(content: str) -> list[str]:
    """The strings of a printed Python list's content (``u'c'``, ``'it''s'``); unparsable content as it stands."""
    import ast

    try:
        values = ast.literal_eval(f"[{content}]")
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return [content.strip()]
    return [str(value) for value in values]


def _comma_lines(lines: list[str], file: str, problems: list[Problem]) -> list[Annotation]:
    """``x1,y1,...,xn,yn[,text]``: the leading numbers, paired (an odd last number is text), then the text."""
    annotations = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        count = next((i for i, field in enumerate(fields) if _numbers(field) is None), len(fields)) // 2 * 2
        points = as_pairs(fields[:count])
        if points is None or len(points) < 3:
            problems.append(Problem(file, number, "bad_line", f"expected x1,y1,...,xn,yn[,text] with at least 3 points, got {line.strip()[:60]!r}"))
            continue
        text = ",".join(fields[count:]).strip()
        annotations.append(Annotation(points, text, text in (TOTALTEXT_DONT_CARE, DONT_CARE), number))
    return annotations


def parse_ctw1500(path: Path, problems: list[Problem]) -> list[Annotation]:
    """A CTW1500 label file: XML, or lines of 32 numbers (box + offsets) or ``x1,y1,...,####text``."""
    if path.suffix.lower() == ".xml":
        return _ctw_xml(path, problems)
    annotations = []
    for number, line in enumerate(read_text_lines(path, problems), start=1):
        if not line.strip():
            continue
        coordinates, mark, text = line.strip().partition(CTW_TEXT_MARK)
        values = as_pairs(coordinates.rstrip(", ").split(","))
        if mark and values is not None and len(values) >= 3:
            points = values
        elif not mark and values is not None and len(values) == 16:
            points = values[2:] + values[0]  # 14 offsets from (xmin, ymin)
        else:
            problems.append(Problem(str(path), number, "bad_line", f"expected 32 numbers (xmin,ymin,xmax,ymax + 14 offset pairs) or x1,y1,...,x14,y14,####text, got {line.strip()[:60]!r}"))
            continue
        annotations.append(Annotation(points, text, text.strip() == DONT_CARE, number))
    return annotations


def _ctw_xml(path: Path, problems: list[Problem]) -> list[Annotation]:
    """``<box>`` elements, numbered in document order (XML has no useful line to point at)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        problems.append(Problem(str(path), None, "bad_file", f"invalid XML: {exc}"))
        return []
    annotations = []
    for number, element in enumerate(root.iter("box"), start=1):
        points = as_pairs((element.findtext("segs") or "").strip().split(","))
        if points is None or len(points) < 3:
            problems.append(Problem(str(path), number, "bad_points", "<segs> must hold x1,y1,...,xn,yn"))
            continue
        text = element.findtext("label") or ""
        annotations.append(Annotation(points, text, text.strip() == DONT_CARE, number))
    return annotations
