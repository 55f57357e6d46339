"""The one dataset-reader contract (``dbtk.datasets`` entry points) and the values readers return.

Every command that reads a labelled split — training, validation, ``dbtk eval``, ``dbtk eval --pred`` and
``dbtk clean-data`` — talks to a reader through :class:`Reader` and nothing else, so any registered reader works
with all of them. A reader indexes its split when constructed (parse problems are collected in ``problems``,
never raised) and decodes one sample at a time. Polygons come back exactly as written in the files: orientation,
repair and the keep/skip decision happen in one place, :func:`dbtk.data.labels.prepare`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from dbtk.data.images import Decoded, DrawScale, orient_points

#: The two frames annotation coordinates of EXIF-rotated photos can be in (see :attr:`Reader.exif`).
EXIF_FRAMES = ("stored", "display")


@dataclass(frozen=True)
class Problem:
    """A problem found while reading a split: where (``file:line``), a reason code for counting, and detail."""

    file: str
    line: int | None
    reason: str
    detail: str

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass
class Annotation:
    """One labelled region as written: points in stored-pixel (or display) coordinates, text, don't-care flag."""

    points: np.ndarray  # (N, 2) float64
    text: str = ""
    ignore: bool = False
    line: int | None = None  # where it came from in ``RawSample.label_file``, for reports


@dataclass
class RawSample:
    """A decoded image with its labels as written, and where those labels came from (for reports)."""

    name: str
    decoded: Decoded
    annotations: list[Annotation]
    label_file: str = ""
    #: Labels written for this image that could not be read (each one is in the reader's ``problems``): an image
    #: whose labels all failed is not a page without text (:func:`dbtk.data.labels.prepare` skips it).
    unreadable: int = 0

    def display_points(self, exif: str) -> list[np.ndarray]:
        """Each annotation's points in the coordinates of the decoded (EXIF-rotated) image.

        ``exif`` is the reader's convention: "stored" labels follow the stored pixels and are rotated with them;
        "display" labels were drawn on the rotated image already.
        """
        decoded = self.decoded
        if exif != "stored" or decoded.orientation == 1:
            return [a.points for a in self.annotations]
        return [orient_points(a.points, decoded.orientation, decoded.stored_size) for a in self.annotations]


@runtime_checkable
class Reader(Protocol):
    """What every registered reader provides. ``dbtk.testing.check_reader`` checks a reader against it.

    - ``exif``: frame of the annotation coordinates for EXIF-rotated photos, one of :data:`EXIF_FRAMES`.
    - ``problems``: what indexing found (missing label files, unparsable lines ...), reported by every command.
    - ``load(i)`` decodes sample ``i``; it raises :class:`dbtk.data.images.ImageError` for an unusable image.
      ``load(i, draw=DrawScale(...))`` (training asks this way) says how small the page will be drawn: a reader
      may then decode it reduced (``dbtk.data.images.decode_image`` does so for JPEGs) or ignore it; the
      returned :class:`dbtk.data.images.Decoded` says which. Training calls a reader's ``load`` without ``draw``
      when its ``load`` has no parameter of that name (readers written before it existed).
    - ``identity(i)`` changes whenever sample ``i``'s pixels or labels change (the sample cache key); it may
      raise :class:`dbtk.data.images.ImageError` as ``load`` does (an image file gone since indexing).
    - ``source(i)`` is the image file when there is one (clean-data and convert copy its bytes), else None.
    """

    exif: str
    problems: list[Problem]

    def __len__(self) -> int: ...
    def name(self, index: int) -> str: ...
    def load(self, index: int, draw: DrawScale | None = None) -> RawSample: ...
    def identity(self, index: int) -> str: ...
    def source(self, index: int) -> Path | None: ...


def takes_draw(reader: Reader) -> bool:
    """Whether ``reader.load`` has a ``draw`` parameter that can be passed by keyword. Readers written before it
    existed take ``load(i)``; one whose ``load`` only shows ``*args, **kwargs`` (a decorator without
    ``functools.wraps``, options of its own) is called that way too, as ``draw=`` could reach code that never
    expected it."""
    try:
        parameters = inspect.signature(reader.load).parameters
    except (TypeError, ValueError):  # no signature to read: call it the plain way
        return False
    draw = parameters.get("draw")
    return draw is not None and draw.kind in (draw.POSITIONAL_OR_KEYWORD, draw.KEYWORD_ONLY)


@dataclass
class Record:
    """One indexed image of a file-based reader: where its pixels and labels are."""

    name: str
    image_path: Path
    annotations: list[Annotation]
    annotation_file: Path | None = None
    unreadable: int = 0  # labels of this image that could not be read (see RawSample.unreadable)


@dataclass
class FileReader:
    """Base for readers whose images are files: subclasses fill ``records`` and ``problems`` when constructed."""

    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    exif: str = "stored"
    _fixed_identity: dict[int, tuple[str, str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.records)

    def name(self, index: int) -> str:
        return self.records[index].name

    def load(self, index: int, draw: DrawScale | None = None) -> RawSample:
        from dbtk.data.images import read_image

        record = self.records[index]
        label_file = str(record.annotation_file) if record.annotation_file else ""
        decoded = read_image(record.image_path, draw=draw)
        return RawSample(record.name, decoded, record.annotations, label_file, record.unreadable)

    def source(self, index: int) -> Path | None:
        return self.records[index].image_path

    def identity(self, index: int) -> str:
        """The image file (resolved path, size, modification time) and a hash of its labels: the cache key.

        The file is looked at on every call (an edited image is a new key); the path resolution and the labels'
        hash, fixed for this reader's records, are computed once per record — they were most of a warm cache hit.
        """
        from dbtk.data.images import ImageError

        record = self.records[index]
        try:
            stat = record.image_path.stat()
        except OSError as exc:  # gone or unreadable since the split was indexed: skipped like a failed load
            raise ImageError("unreadable", f"{record.image_path}: {exc.strerror or exc}") from None
        fixed = self._fixed_identity.get(index)
        if fixed is None:
            import hashlib
            import json

            labels = hashlib.sha256(
                json.dumps([[a.points.tolist(), a.ignore] for a in record.annotations]).encode()
            ).hexdigest()
            unreadable = f"|unreadable={record.unreadable}" if record.unreadable else ""  # the same key as before for the rest
            fixed = self._fixed_identity[index] = (str(record.image_path.resolve()), f"{labels}{unreadable}")
        return f"{fixed[0]}|{stat.st_size}|{stat.st_mtime_ns}|{fixed[1]}"


def read_labels(parse: Callable[[Path, list[Problem]], list[Annotation]], path: Path, problems: list[Problem]) -> tuple[list[Annotation], int]:
    """``parse(path, problems)`` for one image's label file, and how many of its labels could not be read (the
    problems it reported with a line number): what :attr:`Record.unreadable` holds."""
    before = len(problems)
    annotations = parse(path, problems)
    return annotations, sum(problem.line is not None for problem in problems[before:])
