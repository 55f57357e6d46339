"""The same labelled pages written by hand in every format dbtk reads, each as its own tool or release writes it
(not by dbtk's Writer: these fixtures test the readers against the formats, not against dbtk).

A page set maps an image name to its regions ``(points, text, ignore)``; every writer returns the CLI arguments
and the :class:`dbtk.recipe.Split` of what it wrote.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

from dbtk.recipe import Split
from tests.data_fixtures import jpeg_bytes, text_image

Region = tuple[list[list[float]], str, bool]
Pages = dict[str, list[Region]]
Written = tuple[list[str], Split]

WIDTH, HEIGHT = 64, 48


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


#: Boxes only (every format can hold them, box-only formats included), one don't-care region per page set.
BOXES: Pages = {
    "a.jpg": [(rect(8, 10, 40, 20), "hello", False), (rect(8, 30, 30, 40), "###", True)],
    "b.jpg": [(rect(4, 4, 60, 14), "wide", False), (rect(10, 24, 50, 44), "tall", False)],
}
#: A curved region: 14 points, as CTW1500 annotates every region (7 along the top, 7 back along the bottom), at
#: fractional pixels, as annotation tools save them (a converted copy must keep them, not round them).
CURVE = [[4.25 + 8 * i, 22.1 + 0.7 * abs(3 - i)] for i in range(7)] + [[52.25 - 8 * i, 32.3 + 0.7 * abs(i - 3)] for i in range(7)]
#: BOXES plus the curve on page b, for the formats that hold polygons.
CURVED: Pages = {**BOXES, "b.jpg": [*BOXES["b.jpg"], (CURVE, "curve", False)]}


def is_box(points: list[list[float]]) -> bool:
    xs, ys = sorted({p[0] for p in points}), sorted({p[1] for p in points})
    return len(points) == 4 and len(xs) == 2 and len(ys) == 2 and points == rect(xs[0], ys[0], xs[1], ys[1])


def bounds(points: list[list[float]]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def write_images(folder: Path, pages: Pages) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in pages:  # a name may hold sub-folders ("sub1/x.jpg")
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(image_bytes(name))


def image_bytes(name: str) -> bytes:
    return jpeg_bytes(text_image(WIDTH, HEIGHT, seed=sum(map(ord, name))))


# ------------------------------------------------------------------------------------------------ the formats
def write_labelme(root: Path, pages: Pages, *, embed: bool = False) -> Written:
    """LabelMe: JSON beside each image; boxes as ``rectangle`` shapes (two corners); ``embed`` puts the pixels in
    ``imageData`` and leaves the image file out."""
    folder = root / "pages"
    if not embed:
        write_images(folder, pages)
    folder.mkdir(parents=True, exist_ok=True)
    for name, regions in pages.items():
        shapes = []
        for points, text, ignore in regions:
            kind, corners = ("rectangle", [list(bounds(points)[:2]), list(bounds(points)[2:])]) if is_box(points) else ("polygon", points)
            shapes.append({"label": text, "points": corners, "group_id": None, "description": "", "shape_type": kind,
                           "flags": {"difficult": ignore}})
        data = base64.b64encode(image_bytes(name)).decode() if embed else None
        # Beside its image, imagePath relative to the JSON file: how LabelMe saves in a folder's sub-folders too.
        document = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": Path(name).name, "imageData": data,
                    "imageHeight": HEIGHT, "imageWidth": WIDTH}
        (folder / name).with_suffix(".json").write_text(json.dumps(document))
    return [str(folder)], Split(str(folder))


def write_labelstudio(root: Path, pages: Pages) -> Written:
    """Label Studio's JSON export: uploads with their hash prefix, percent coordinates, the OCR template's
    transcription as a ``textarea`` result sharing the region's id; don't care as the text ``###``."""
    write_images(root / "images", pages)
    tasks = []
    for task_id, (name, regions) in enumerate(pages.items(), start=1):
        results = []
        for number, (points, text, _ignore) in enumerate(regions):
            region = f"r{task_id}-{number}"
            if is_box(points):
                x0, y0, x1, y1 = bounds(points)
                value = {"x": 100 * x0 / WIDTH, "y": 100 * y0 / HEIGHT, "width": 100 * (x1 - x0) / WIDTH, "height": 100 * (y1 - y0) / HEIGHT, "rotation": 0}
                kind = "rectanglelabels"
            else:
                value = {"points": [[100 * x / WIDTH, 100 * y / HEIGHT] for x, y in points], "closed": True}
                kind = "polygonlabels"
            size = {"original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0}
            results.append({"id": region, "type": kind, "from_name": "label", "to_name": "image", **size, "value": {**value, kind: ["Text"]}})
            results.append({"id": region, "type": "textarea", "from_name": "transcription", "to_name": "image", **size, "value": {**value, "text": [text]}})
        tasks.append({"id": task_id, "data": {"image": f"/data/upload/1/{task_id:08x}-{name}"},
                      "annotations": [{"id": task_id, "was_cancelled": False, "result": results}], "predictions": []})
    (root / "export.json").write_text(json.dumps(tasks))
    return [str(root / "images"), "--annotations", str(root / "export.json")], Split(str(root / "images"), str(root / "export.json"))


def write_ppocr(root: Path, pages: Pages) -> Written:
    """PPOCRLabel: ``Label.txt`` in the image folder, paths as ``folder/name``; don't care flagged ``difficult``."""
    folder = root / "images"
    write_images(folder, pages)
    lines = []
    for name, regions in pages.items():
        entries = [{"transcription": text, "points": points, "difficult": ignore, "key_cls": "None"} for points, text, ignore in regions]
        lines.append(f"{folder.name}/{name}\t{json.dumps(entries, ensure_ascii=False)}")
    (folder / "Label.txt").write_text("\n".join(lines) + "\n")
    return [str(folder)], Split(str(folder))


def write_coco(root: Path, pages: Pages) -> Written:
    """COCO instances: boxes as ``bbox`` only (box-only labels), polygons as segmentations; don't care iscrowd."""
    write_images(root / "images", pages)
    images, annotations = [], []
    for image_id, (name, regions) in enumerate(pages.items(), start=1):
        images.append({"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT})
        for points, _text, ignore in regions:
            x0, y0, x1, y1 = bounds(points)
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": int(ignore),
                          "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
            if not is_box(points):
                annotation["segmentation"] = [[v for point in points for v in point]]
            annotations.append(annotation)
    document = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "text"}]}
    (root / "instances.json").write_text(json.dumps(document))
    return [str(root / "images"), "--annotations", str(root / "instances.json")], Split(str(root / "images"), str(root / "instances.json"))


def write_doctr(root: Path, pages: Pages) -> Written:
    """docTR: ``images/`` + ``labels.json``. It has no don't care: those regions are left out."""
    write_images(root / "images", pages)
    labels = {name: {"img_dimensions": [HEIGHT, WIDTH], "img_hash": "not checked",
                     "polygons": [points for points, _text, ignore in regions if not ignore]} for name, regions in pages.items()}
    (root / "labels.json").write_text(json.dumps(labels))
    return [str(root)], Split(str(root))


def write_totaltext(root: Path, pages: Pages) -> Written:
    """Total-Text's ``.txt`` release: ``poly_gt_NAME.txt`` records, long arrays wrapped onto a second line as
    numpy prints them; don't care as ``ornt`` and transcription ``#``."""
    write_images(root / "images", pages)
    (root / "gts").mkdir()
    for name, regions in pages.items():
        records = []
        for points, text, ignore in regions:
            xs, ys = (" ".join(f"{int(v):3d}" for v in values) for values in zip(*points, strict=True))
            xs = xs if len(points) <= 8 else xs[: len(xs) // 2] + "\n " + xs[len(xs) // 2 :]
            ornt, word = ("#", "#") if ignore else ("c" if len(points) > 4 else "h", text)
            records.append(f"x: [[{xs}]], y: [[{ys}]], ornt: [u'{ornt}'], transcriptions: [u'{word}']")
        (root / "gts" / f"poly_gt_{Path(name).stem}.txt").write_text("\n".join(records) + "\n")
    return [str(root)], Split(str(root))


def write_ctw1500(root: Path, pages: Pages, release: str = "test") -> Written:
    """CTW1500, every region with 14 points (boxes get 7 along the top and 7 back along the bottom, as its
    labelling tool made them). The ``test`` release: ``000NNNN.txt`` lines ``x1,y1,...,x14,y14,####text`` (don't
    care as the text ``###``); the first ``train`` release: ``NNNN.txt`` lines of 32 numbers, the box and 14
    offsets from its top-left corner, with no text and no don't care (those regions are left out)."""
    write_images(root / "images", pages)
    (root / "gts").mkdir()
    for name, regions in pages.items():
        lines = []
        for points, text, ignore in regions:
            x0, y0, x1, y1 = bounds(points)
            curve = points if len(points) == 14 else [[x0 + (x1 - x0) * i / 6, y0] for i in range(7)] + [[x1 - (x1 - x0) * i / 6, y1] for i in range(7)]
            if release == "test":
                lines.append(",".join(f"{v:g}" for point in curve for v in point) + f",####{'###' if ignore else text}")
            elif not ignore:
                lines.append(",".join(f"{v:g}" for v in (x0, y0, x1, y1, *(v for x, y in curve for v in (x - x0, y - y0)))))
        stem = Path(name).stem
        (root / "gts" / (f"000{stem}.txt" if release == "test" else f"{stem}.txt")).write_text("\n".join(lines) + "\n")
    return [str(root)], Split(str(root))


def write_icdar(root: Path, pages: Pages) -> Written:
    write_images(root / "images", pages)
    (root / "gts").mkdir()
    for name, regions in pages.items():
        lines = [",".join(f"{v:g}" for point in points for v in point) + f",{'###' if ignore else text}" for points, text, ignore in regions]
        (root / "gts" / f"gt_{Path(name).stem}.txt").write_text("\n".join(lines) + "\n")
    return [str(root)], Split(str(root))


def write_receipt(root: Path, pages: Pages) -> Written:
    write_images(root / "images", pages)
    entries = {name: {"words": {f"{i:04d}": {"points": points, "transcription": "###" if ignore else text}
                                for i, (points, text, ignore) in enumerate(regions, start=1)}} for name, regions in pages.items()}
    (root / "labels.json").write_text(json.dumps({"images": entries}))
    return [str(root / "images"), "--annotations", str(root / "labels.json")], Split(str(root / "images"), str(root / "labels.json"))


#: Every format's writer, by reader name.
WRITERS: dict[str, Callable[[Path, Pages], Written]] = {
    "coco": write_coco,
    "ctw1500": write_ctw1500,
    "doctr": write_doctr,
    "icdar2015": write_icdar,
    "label-studio": write_labelstudio,
    "labelme": write_labelme,
    "ppocr": write_ppocr,
    "receipt-json": write_receipt,
    "totaltext": write_totaltext,
}
#: The page set each format can hold: CTW1500 and docTR have no don't care, ICDAR2015 lines hold 4 points.
HOLDS_CURVES = {"coco", "ctw1500", "label-studio", "labelme", "ppocr", "receipt-json", "totaltext"}


def fixture(name: str) -> Callable[[Path], Written]:
    """A ``tests/test_readers.py`` fixture: the curved page set where the format holds curves, else the boxes."""
    pages = CURVED if name in HOLDS_CURVES else BOXES
    return lambda root: WRITERS[name](root, pages)
