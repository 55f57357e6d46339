"""LabelMe JSON: one file per image, as LabelMe saves it (https://github.com/wkentaro/labelme, the ``LabelFile``
class of ``labelme/_label_file.py``; the layout is documented in the project's README and examples)::

    {"version": "5.5.0", "flags": {}, "imagePath": "a.jpg", "imageData": null, "imageHeight": 48, "imageWidth": 64,
     "shapes": [{"label": "hello", "points": [[8, 10], [40, 10], [40, 20], [8, 20]], "shape_type": "polygon",
                 "group_id": null, "description": "", "flags": {}}]}

dbtk reads ``polygon`` shapes (any number of points; a missing ``shape_type``, as LabelMe 3 wrote, means polygon)
and ``rectangle`` shapes (two opposite corners: a box). The ``label`` is the text; ``###`` or a true
``difficult`` (on the shape, as X-AnyLabeling writes it, or in its ``flags``) marks don't care. ``imagePath`` is
resolved against the JSON file's folder, then by file name in the image folder; when no such file exists the
base64 ``imageData`` LabelMe can embed is decoded instead. Other shape types (circle, line, linestrip, point,
mask) are reported as ``unsupported_shape``, never guessed into polygons. LabelMe loads images with their EXIF
orientation applied (``apply_exif_orientation``), so ``exif`` defaults to "display".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbtk.data.formats import DONT_CARE, IMAGE_SUFFIXES, _check_exif, _require_dir
from dbtk.data.labelfiles import as_points, box, distinct_names, duplicate, file_name, image_folder, locate, read_json
from dbtk.data.reader import Annotation, FileReader, Problem, RawSample, Record

if TYPE_CHECKING:
    from dbtk.data.images import DrawScale
    from dbtk.recipe import Split

#: The shapes that outline text. The rest (circle, line, linestrip, point, mask) are reported, not read.
SHAPES = ("polygon", "rectangle")


class LabelMe(FileReader):
    """A folder of LabelMe JSON files (``split.images``; with ``split.annotations`` the JSON files live there)."""

    def __init__(self, split: Split | None = None, exif: str = "display") -> None:
        super().__init__(exif=_check_exif(exif))
        images = image_folder(split, "labelme", "a split folder holding the images and their LabelMe JSON files")
        folder = _require_dir(Path(split.annotations).expanduser(), "label") if split.annotations else images
        #: Records whose pixels are their JSON file's ``imageData``: decoded again on load, never held in memory.
        self.embedded: set[int] = set()
        seen: set[Path] = set()
        damaged: set[Path] = set()  # unreadable JSON files (below their folder, no suffix): their images are reported once, as bad_file
        for path in sorted(folder.rglob("*.json")):  # sub-folders too: LabelMe's Open Dir lists them, saving each JSON beside its image
            document = read_json(path, self.problems)
            if not isinstance(document, dict) or not isinstance(document.get("shapes"), list):
                if document is not None:
                    self.problems.append(Problem(str(path), None, "bad_entry", "not a LabelMe file: no 'shapes' list"))
                damaged.add(path.relative_to(folder).with_suffix(""))
                continue
            record = self._record(document, path, images)
            if record is None or (record.image_path != path and duplicate(seen, record.image_path, str(path), None, self.problems)):
                continue
            if record.image_path == path:
                self.embedded.add(len(self.records))
            self.records.append(record)
        distinct_names(self.records)
        for image in _images_below(images):
            if image.resolve() not in seen and image.relative_to(images).with_suffix("") not in damaged:
                self.problems.append(Problem(str(image), None, "missing_gt", f"no LabelMe JSON in {folder} names it"))

    def _record(self, document: dict[str, Any], path: Path, images: Path) -> Record | None:
        reference = document.get("imagePath")
        reference = reference if isinstance(reference, str) and reference.strip() else f"{path.stem}.png"
        image = locate(reference, path.parent, images)
        if image is None:
            data = document.get("imageData")
            if not (isinstance(data, str) and data):
                self.problems.append(Problem(str(path), None, "missing_image", f"{reference} not found (next to it or in {images}) and no imageData"))
                return None
            image = path  # the pixels are inside the label file
        return Record(file_name(reference), image, self._shapes(document["shapes"], path), path)

    def _shapes(self, shapes: list[Any], path: Path) -> list[Annotation]:
        annotations = []
        for number, shape in enumerate(shapes, start=1):
            if not isinstance(shape, dict):
                self.problems.append(Problem(str(path), number, "bad_entry", "a shape must be an object"))
                continue
            kind = shape.get("shape_type") or "polygon"
            if kind not in SHAPES:
                self.problems.append(Problem(str(path), number, "unsupported_shape", f"shape_type {kind!r}: only {' and '.join(SHAPES)} outline text"))
                continue
            points = as_points(shape.get("points"))
            if points is None:
                self.problems.append(Problem(str(path), number, "bad_points", "points must be [[x, y], ...]"))
                continue
            if kind == "rectangle":
                points = box(*points.min(axis=0), *points.max(axis=0))
            label = shape.get("label")
            text = label if isinstance(label, str) else ""
            flags = shape.get("flags")
            difficult = shape.get("difficult") is True or (isinstance(flags, dict) and flags.get("difficult") is True)
            annotations.append(Annotation(points, text, text.strip() == DONT_CARE or difficult, number))
        return annotations

    def load(self, index: int, draw: DrawScale | None = None) -> RawSample:
        if index not in self.embedded:
            return super().load(index, draw)
        import base64
        import binascii

        from dbtk.data.images import ImageError, decode_image

        record = self.records[index]
        document = read_json(record.image_path, [])
        data = document.get("imageData") if isinstance(document, dict) else None
        try:
            pixels = base64.b64decode(data) if isinstance(data, str) else b""
        except binascii.Error as exc:
            raise ImageError("corrupt", f"{record.image_path}: imageData is not base64 ({exc})") from None
        return RawSample(record.name, decode_image(pixels, f"{record.image_path} (imageData)", draw=draw), record.annotations, str(record.image_path))

    def source(self, index: int) -> Path | None:
        """None for embedded pixels: there is no image file to copy, so a copy writes the decoded pixels."""
        return None if index in self.embedded else super().source(index)


def _images_below(folder: Path) -> list[Path]:
    """Every image in ``folder`` and its sub-folders, where LabelMe finds them (it walks the folder it opens)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
