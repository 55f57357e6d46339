"""File-based dataset readers (the ``dbtk.datasets`` entry-point group): ICDAR2015 folders and receipt JSON.

Both meet the one reader contract, :class:`dbtk.data.reader.Reader`; polygons come back as written, and
orientation and repair happen in :func:`dbtk.data.labels.prepare` so all formats get them alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dbtk.data.reader import EXIF_FRAMES, Annotation, FileReader, Problem, Record, read_labels
from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.data.reader import Reader
    from dbtk.recipe import Split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DONT_CARE = "###"


def _check_exif(exif: str) -> str:
    if exif not in EXIF_FRAMES:
        raise DbtkError(f"exif must be 'stored' or 'display', got {exif!r}")
    return exif


def _images_in(folder: Path, dangling: bool = False) -> list[Path]:
    """The image files of ``folder``, sorted; with ``dangling``, links to no file named like images too."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and (p.is_file() or dangling and p.is_symlink() and not p.exists()))


def _require_dir(path: Path, what: str, root: Path | None = None, expected: str = "") -> Path:
    """``path`` when it is a folder. Otherwise one error that says what it is instead (a file where a folder of
    per-image files belongs is a different mistake from a typo) and, given the split's ``root`` and the
    ``expected`` format, which format that folder looks like when it looks like another one."""
    if path.is_dir():
        return path
    if path.is_file():
        raise DbtkError(f"{what} folder expected, but {path.absolute()} is a file",
                        hint="this format reads a folder here; formats with one label file (coco, label-studio, ppocr, "
                        "doctr, receipt-json) take it as annotations")
    guess = looks_like(root) if root is not None else None
    hint = f"{root} looks like a {guess} split: did you mean format '{guess}' (--from/--format {guess})?" if guess and guess != expected else None
    raise DbtkError(f"{what} folder not found: {path.absolute()}", hint=hint)


def looks_like(folder: Path) -> str | None:
    """The format a split folder's own files name, read cheaply (file names, and the start of one JSON file):
    PPOCRLabel's ``Label.txt``, docTR's ``images/`` + ``labels.json``, LabelMe JSON files (a ``shapes`` list),
    ICDAR2015's ``images/`` + ``gts/``; None when nothing says."""
    if not folder.is_dir():
        return None
    if (folder / "Label.txt").is_file():
        return "ppocr"
    if (folder / "images").is_dir():
        return "doctr" if (folder / "labels.json").is_file() else "icdar2015" if (folder / "gts").is_dir() else None
    first = next(iter(sorted(folder.glob("*.json"))), None)
    if first is not None:
        with first.open("rb") as stream:
            if b'"shapes"' in stream.read(65536):
                return "labelme"
    return None


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


def label_names(stem: str) -> list[str]:
    """The label file names image STEM may have in an ICDAR2015 folder: ``gt_``, bare, or ``res_`` (predictions)."""
    return [f"gt_{stem}.txt", f"{stem}.txt", f"res_{stem}.txt"]


def find_label_file(folder: Path, image_name: str) -> Path | None:
    """``gt_NAME.txt``, ``NAME.txt`` or ``res_NAME.txt`` for image NAME (prediction folders use res_)."""
    return next((folder / n for n in label_names(Path(image_name).stem) if (folder / n).is_file()), None)


def pair_label_files(
    reader: FileReader,
    images: Path,
    labels: Path,
    names: Callable[[str], Sequence[str]],
    parse: Callable[[Path, list[Problem]], list[Annotation]],
    patterns: Sequence[str] = ("*.txt",),
    *,
    root: Path | None = None,
    expected: str = "",
) -> None:
    """Fill ``reader`` from an image folder and a folder of per-image label files (ICDAR2015, Total-Text, CTW1500).

    ``names(stem)`` lists the label file names an image may have, in order. An image without one is reported
    (``missing_gt``) and skipped: training on it would teach that its text is background; a label file without
    an image is reported (``missing_image``), not guessed. ``root`` and ``expected`` (the split folder and the
    format's name) let a missing folder's error say which format the split looks like instead.
    """
    _require_dir(images, "image", root, expected)
    _require_dir(labels, "label", root, expected)
    used: set[Path] = set()
    for image in _images_in(images):
        label = next((labels / n for n in names(image.stem) if (labels / n).is_file()), None)
        if label is None:
            reader.problems.append(Problem(str(image), None, "missing_gt", f"no {names(image.stem)[0]} in {labels}"))
            continue
        used.add(label)
        annotations, unreadable = read_labels(parse, label, reader.problems)
        reader.records.append(Record(image.name, image, annotations, label, unreadable))
    orphans = {path for pattern in patterns for path in labels.glob(pattern)} - used
    for orphan in sorted(orphans):
        reader.problems.append(Problem(str(orphan), None, "missing_image", f"no image for this label file in {images}"))


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
        pair_label_files(self, images, labels, label_names, parse_icdar_file, root=None if split.annotations else root, expected="icdar2015")


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
            raise DbtkError(f"annotation file not found: {Path(path).absolute()}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DbtkError(f"{path}: invalid JSON: {exc}") from None
        entries = document.get("images") if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            raise DbtkError(f"{path}: expected a top-level object with an 'images' table")
        if not entries:  # nothing to read: said here, where the format is known
            raise DbtkError(f"{path} labels no images: its 'images' table is empty",
                            hint='receipt JSON is {"images": {"NAME.jpg": {"words": {"0001": {"points": [[x, y], ...]}}}}}')
        for name, entry in sorted(entries.items()):
            image_path = images / name
            if not image_path.is_file():
                self.problems.append(Problem(str(path), None, "missing_image", f"{name} is labelled but not in {images}"))
                continue
            self.records.append(Record(image_path.name, image_path, self._words(entry, f"{path}#{name}"), path))
        from dbtk.data.labelfiles import distinct_names  # labelfiles builds on this module: imported here

        distinct_names(self.records)  # keys with folders ("sub1/x.jpg", "sub2/x.jpg") are two images

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


def open_split(images: str, annotations: str | None = None, format_name: str | None = None) -> Reader:
    """A reader for a split named on the command line."""
    from dbtk.recipe import Split
    from dbtk.registry import registry

    name = format_name or default_format(annotations)
    return registry.build("dataset", {"name": name}, split=Split(images, annotations))


def image_files(paths: Sequence[str]) -> list[Path]:
    """Expand files, folders and globs into a list of image files, in the order given (a folder's and a glob's
    sorted), each file once: a file named twice (``a/x.png`` and ``./a/x.png``, or given beside its folder) is one
    input, not two runs whose outputs would be renamed apart."""
    import glob
    import os

    found: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():  # a link to no file is kept: reading it says so, rather than the file vanishing unsaid
            found += _images_in(path, dangling=True)
        elif path.is_file():
            found.append(path)
        else:
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))]
            found += [m for m in matches if m.suffix.lower() in IMAGE_SUFFIXES]
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.abspath(path), path)  # the first spelling of each file, in the order given
    found = list(unique.values())
    if not found:
        raise DbtkError("no images found in " + ", ".join(str(Path(p).expanduser().absolute()) for p in paths),
                        hint=f"give image files ({' '.join(IMAGE_SUFFIXES)}), folders holding them (their sub-folders are not "
                        "read) or globs ('pages/**/*.jpg')")
    return found
