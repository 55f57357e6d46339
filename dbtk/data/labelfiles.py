"""What the readers of other tools' label files share: JSON that reports instead of raising, points, boxes,
finding an image by the name a label file gives it, and pairing images with per-image label files.

Each format's own knowledge stays in its module (``labelme``, ``labelstudio``, ``ppocr``, ``coco``, ``doctr``,
``curved``); what they all need the same way is here once, so they also fail the same way: a damaged entry is a
:class:`dbtk.data.reader.Problem` (counted, never raised), a split's one annotation document that is not JSON is
a :class:`dbtk.errors.DbtkError` (there is nothing to read around), exactly as the built-in readers do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence, Sized
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any

import numpy as np

from dbtk.data.formats import _require_dir
from dbtk.data.reader import Problem, Record
from dbtk.errors import DbtkError

if TYPE_CHECKING:
    from dbtk.recipe import Split

#: JSON that cannot be decoded: syntax (truncated files), bytes that are not UTF-8, nesting deeper than Python
#: recurses (a hostile file).
JSON_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, RecursionError)


def image_folder(split: Split | None, name: str, needs: str) -> Path:
    """The split's image folder. A reader built without a split, or with no such folder, has nothing to index."""
    if split is None:
        raise DbtkError(f"format '{name}' needs {needs}")
    return _require_dir(Path(split.images).expanduser(), "image")


def annotation_file(split: Split | None, name: str, example: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of a format that keeps a split's labels in one file (COCO, Label Studio)."""
    if split is None or not split.annotations:
        raise DbtkError(f"format '{name}' needs a split table with images and annotations", hint=f'e.g. train = {{ images = "pages", annotations = "{example}" }}')
    return image_folder(split, name, "a split"), Path(split.annotations).expanduser()


def read_json(path: Path, problems: list[Problem]) -> Any | None:
    """A per-image label file (LabelMe): one that is not JSON is a ``bad_file`` problem and only its image is lost."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except JSON_ERRORS as exc:
        problems.append(Problem(str(path), None, "bad_file", f"invalid JSON: {exc}"))
        return None


def load_document(path: Path, expected: str) -> Any:
    """A split's one annotation file (COCO, Label Studio, doctr): when it is not JSON the split cannot be used."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DbtkError(f"annotation file not found: {Path(path).absolute()}") from None
    except JSON_ERRORS as exc:
        raise DbtkError(f"{path}: invalid JSON: {exc}", hint=f"expected {expected}") from None


def require_entries(entries: Sized, path: Path, what: str, expected: str) -> None:
    """Refuse a split's one annotation file that lists nothing (COCO ``"images": []``, an empty Label Studio
    export): there is nothing to read, and the refusal says so in the format's own terms rather than leaving an
    empty split to a generic "no labelled images" that cannot know the format."""
    if not len(entries):
        raise DbtkError(f"{path} lists no images: {what} is empty", hint=f"expected {expected}")


def as_points(value: object) -> np.ndarray | None:
    """``[[x, y], ...]`` as an (N, 2) float64 array, or None when it is not one. Non-finite numbers pass: the
    label path drops and reports them (``non_finite``) like every other reader's."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return array if array.ndim == 2 and array.shape[1] == 2 and len(array) else None


def as_pairs(value: object) -> np.ndarray | None:
    """A flat ``[x1, y1, x2, y2, ...]`` (COCO segmentation, CTW1500 lines) as (N, 2), or None."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return array.reshape(-1, 2) if array.ndim == 1 and len(array) >= 2 and len(array) % 2 == 0 else None


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The four corners of an axis-aligned box, clockwise from top-left: how every box-only label becomes a
    polygon (LabelMe and Label Studio rectangles, COCO ``bbox``)."""
    left, right, top, bottom = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    return np.array([[left, top], [right, top], [right, bottom], [left, bottom]], dtype=np.float64)


def file_name(reference: str) -> str:
    """The file name a label file gives, whichever separators the tool's platform wrote (``C:\\data\\a.jpg``)."""
    return PureWindowsPath(reference).name


def locate(reference: str, *folders: Path) -> Path | None:
    """The image a label file names: the path itself under each folder (relative paths as the tool wrote them),
    then its file name in each folder (labels moved away from where they were made)."""
    candidates = [folder / reference for folder in folders] + [folder / file_name(reference) for folder in folders]
    return next((path for path in candidates if path.is_file()), None)


def duplicate(seen: set[Path], image: Path, where: str, line: int | None, problems: list[Problem]) -> bool:
    """True, and a ``duplicate`` problem, when an earlier entry already labelled the image file ``image``: the
    first one is used. The file is the identity, not its name: ``sub1/x.jpg`` and ``sub2/x.jpg`` are two images
    (:func:`distinct_names` tells them apart)."""
    key = image.resolve()
    if key in seen:
        problems.append(Problem(where, line, "duplicate", f"{image} is labelled again here; the first labels are used"))
        return True
    seen.add(key)
    return False


def distinct_names(records: list[Record]) -> None:
    """Make the records' names distinct (:func:`unique_names`).

    A name keys everything downstream: the written copy's image and label files (convert, clean-data), the
    prediction files ``dbtk eval --pred`` looks for, the sample cache and every report; two images sharing one
    would overwrite each other's copy and labels. Names stay plain file names, so each of those stays one file in
    one folder."""
    for record, name in zip(records, unique_names([(r.name, r.image_path) for r in records]), strict=True):
        record.name = name


def unique_names(items: Sequence[tuple[str, Path]], clash: Callable[[str], str] = str) -> list[str]:
    """Each item's name, distinct: a name is kept unless ``clash(name)`` is shared with another item
    (``sub1/x.jpg``, ``sub2/x.jpg``: splits and shards kept as folders; for outputs named by stem, ``x.png`` beside
    ``x.jpg``); those are named by their path below the folder they share, folders joined by ``_``
    (``sub1_x.jpg``, ``sub2_x.jpg``), numbered in the rare case that name is taken too."""
    from collections import Counter

    counts = Counter(clash(name) for name, _ in items)
    names = [name for name, _ in items]
    taken = {name for name in names if counts[clash(name)] == 1}
    clashing = [index for index, name in enumerate(names) if counts[clash(name)] > 1]
    if not clashing:
        return names
    common = Path(os.path.commonpath([items[index][1].absolute().parent for index in clashing]))
    for index in clashing:
        name, path = items[index]
        name = "_".join(path.absolute().relative_to(common).parts[:-1] + (name,))
        stem, suffix, number = Path(name).stem, Path(name).suffix, 1
        while name in taken:
            number += 1
            name = f"{stem}-{number}{suffix}"
        taken.add(name)
        names[index] = name
    return names
