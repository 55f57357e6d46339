"""Dataset readers (the ``dbtk.datasets`` entry-point group): ICDAR2015 folders and receipt JSON.

A reader indexes a split when constructed — parse problems are collected, never raised — and loads one
sample at a time. Every reader returns the same :class:`RawSample`, with polygons as written in the files;
repair and EXIF handling happen in :mod:`dbtk.data.dataset` so all formats get them alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dbtk.data.images import Decoded, orient_points, read_image
from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.recipe import Split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DONT_CARE = "###"


@dataclass(frozen=True)
class Problem:
    """A problem found while reading annotations: ``file:line`` plus a reason code for counting."""

    file: str
    line: int | None
    reason: str
    detail: str

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass
class Annotation:
    points: np.ndarray  # (N, 2) float64 as written (stored-pixel coordinates)
    text: str = ""
    ignore: bool = False
    line: int | None = None  # where it came from, for reports


@dataclass
class Record:
    """One indexed image: where its pixels and labels are."""

    name: str
    image_path: Path
    annotations: list[Annotation]
    annotation_file: Path | None = None


@dataclass
class RawSample:
    name: str
    decoded: Decoded
    annotations: list[Annotation]

    def display_points(self, exif: str) -> list[np.ndarray]:
        """Each annotation's points in the coordinates of the decoded (EXIF-rotated) image.

        ``exif`` is the reader's convention: "stored" labels follow the stored pixels and are rotated with them;
        "display" labels were drawn on the rotated image already.
        """
        decoded = self.decoded
        if exif != "stored" or decoded.orientation == 1:
            return [a.points for a in self.annotations]
        return [orient_points(a.points, decoded.orientation, decoded.stored_size) for a in self.annotations]


@dataclass
class FileReader:
    """Base for readers whose images are files; subclasses fill ``records`` and ``problems``."""

    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Frame of the annotation coordinates for EXIF-rotated photos: "stored" pixels (what most annotation tools
    #: and ICDAR files use) or "display" (annotated on the already rotated image).
    exif: str = "stored"

    def __len__(self) -> int:
        return len(self.records)

    def name(self, index: int) -> str:
        return self.records[index].name

    def load(self, index: int) -> RawSample:
        record = self.records[index]
        return RawSample(record.name, read_image(record.image_path), record.annotations)

    def identity(self, index: int) -> str:
        """Changes whenever the image file or its labels change (for the target cache key)."""
        record = self.records[index]
        stat = record.image_path.stat()
        labels = hashlib.sha256(
            json.dumps([[a.points.tolist(), a.ignore] for a in record.annotations]).encode()
        ).hexdigest()
        return f"{record.image_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{labels}"


def _check_exif(exif: str) -> str:
    if exif not in ("stored", "display"):
        raise DbtkError(f"exif must be 'stored' or 'display', got {exif!r}")
    return exif


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DbtkError(f"{what} folder not found: {path}")
    return path


def read_text_lines(path: Path, problems: list[Problem]) -> list[str]:
    """Lines of a label file: UTF-8 with or without BOM; other encodings are read as Latin-1 and reported."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(Problem(str(path), None, "encoding", f"not UTF-8 ({exc.reason}); read as Latin-1"))
        text = raw.decode("latin-1")
    return text.splitlines()


def parse_icdar_line(line: str, file: str, number: int, problems: list[Problem]) -> Annotation | None:
    """``x1,y1,...,x4,y4,transcription`` — the transcription is everything after the 8th comma."""
    line = line.strip().lstrip("\ufeff")
    if not line:
        return None
    fields = line.split(",", 8)
    if len(fields) < 8:
        problems.append(Problem(file, number, "bad_line", f"expected 8 coordinates, got {len(fields)} fields"))
        return None
    try:
        coords = [float(v) for v in fields[:8]]
    except ValueError:
        problems.append(Problem(file, number, "bad_line", f"non-numeric coordinate in {line[:60]!r}"))
        return None
    text = fields[8] if len(fields) > 8 else ""
    return Annotation(np.asarray(coords, dtype=np.float64).reshape(4, 2), text, text.strip() == DONT_CARE, number)


def parse_icdar_file(path: Path, problems: list[Problem]) -> list[Annotation]:
    annotations = []
    for number, line in enumerate(read_text_lines(path, problems), start=1):
        annotation = parse_icdar_line(line, str(path), number, problems)
        if annotation is not None:
            annotations.append(annotation)
    return annotations


def find_label_file(folder: Path, image_name: str) -> Path | None:
    """``gt_NAME.txt``, ``NAME.txt`` or ``res_NAME.txt`` for image NAME (prediction folders use res_)."""
    stem = Path(image_name).stem
    for candidate in (f"gt_{stem}.txt", f"{stem}.txt", f"res_{stem}.txt"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


class ICDAR2015(FileReader):
    """ICDAR2015 layout: ``ROOT/images/NAME.jpg`` + ``ROOT/gts/gt_NAME.txt``.

    With a split table, ``images`` is the image folder and ``annotations`` the label folder (the original
    ICDAR2015 download layout). An image without a label file is skipped and reported (``missing_gt``): training
    on it would teach the model that its text is background.
    """

    def __init__(self, split: Split | None = None, exif: str = "stored") -> None:
        super().__init__(exif=_check_exif(exif))
        if split is None:
            raise DbtkError("format 'icdar2015' needs a split folder (data.train / data.val)")
        root = Path(split.images).expanduser()
        if split.annotations:
            images, labels = root, Path(split.annotations).expanduser()
        else:
            images, labels = root / "images", root / "gts"
        _require_dir(images, "image")
        _require_dir(labels, "label")
        for image_path in _images_in(images):
            label = find_label_file(labels, image_path.name)
            if label is None:
                self.problems.append(Problem(str(image_path), None, "missing_gt", f"no gt_{image_path.stem}.txt in {labels}"))
                continue
            self.records.append(Record(image_path.name, image_path, parse_icdar_file(label, self.problems), label))


class ReceiptJSON(FileReader):
    """Receipt-competition JSON: one file ``{"images": {NAME: {"words": {ID: {"points": [[x, y], ...]}}}}}``.

    Words may carry other keys (ignored). A word whose ``transcription`` (when present) is ``###`` is don't-care.
    """

    def __init__(self, split: Split | None = None, exif: str = "stored") -> None:
        super().__init__(exif=_check_exif(exif))
        if split is None or not split.annotations:
            raise DbtkError(
                "format 'receipt-json' needs a split table with images and annotations",
                hint='e.g. train = { images = "datasets/images/train", annotations = "datasets/jsons/train.json" }',
            )
        images = _require_dir(Path(split.images).expanduser(), "image")
        path = Path(split.annotations).expanduser()
        try:
            document = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise DbtkError(f"annotation file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DbtkError(f"{path}: invalid JSON: {exc}") from None
        entries = document.get("images") if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            raise DbtkError(f"{path}: expected a top-level object with an 'images' table")
        for name, entry in sorted(entries.items()):
            image_path = images / name
            if not image_path.is_file():
                self.problems.append(Problem(str(path), None, "missing_image", f"{name} is labelled but not in {images}"))
                continue
            self.records.append(Record(name, image_path, self._words(entry, f"{path}#{name}"), path))

    def _words(self, entry: object, where: str) -> list[Annotation]:
        words = entry.get("words") if isinstance(entry, dict) else None
        if not isinstance(words, dict):
            self.problems.append(Problem(where, None, "bad_entry", "no 'words' table"))
            return []
        annotations = []
        for index, (word_id, word) in enumerate(sorted(words.items())):
            points = word.get("points") if isinstance(word, dict) else None
            try:
                array = np.asarray(points, dtype=np.float64)
            except (TypeError, ValueError):
                array = None
            if array is None or array.ndim != 2 or array.shape[1] != 2:
                self.problems.append(Problem(where, index + 1, "bad_points", f"word {word_id}: points must be [[x, y], ...]"))
                continue
            text = str(word.get("transcription", "")) if isinstance(word, dict) else ""
            annotations.append(Annotation(array, text, text.strip() == DONT_CARE, index + 1))
        return annotations


def default_format(annotations: str | None) -> str:
    """Without --format, one label *file* means receipt JSON; otherwise ICDAR2015 folders."""
    return "receipt-json" if annotations and Path(annotations).is_file() else "icdar2015"


def open_split(images: str, annotations: str | None = None, format_name: str | None = None) -> FileReader:
    """A reader for a split named on the command line."""
    from dbtk.recipe import Split
    from dbtk.registry import registry

    name = format_name or default_format(annotations)
    return registry.build("dataset", {"name": name}, split=Split(images, annotations))


def image_files(paths: Sequence[str]) -> list[Path]:
    """Expand files, folders and globs into a sorted list of image files."""
    import glob

    found: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            found += _images_in(path)
        elif path.is_file():
            found.append(path)
        else:
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))]
            found += [m for m in matches if m.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise DbtkError(f"no images found in {', '.join(paths)}")
    return found
