"""The readers of other tools' labels: each format's own conventions, and damaged files in every format reported
as problems (file:line, reason), counted by clean-data, never a traceback."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dbtk.cli import main
from dbtk.data import clean
from dbtk.data.labels import prepare
from dbtk.data.reader import Reader
from dbtk.errors import DbtkError
from dbtk.recipe import Split
from dbtk.registry import registry
from tests.conftest import run_dbtk
from tests.data_fixtures import jpeg_bytes, text_image
from tests.external_fixtures import BOXES, HEIGHT, WIDTH, WRITERS, image_bytes, rect, write_ctw1500, write_images


def read(name: str, split: Split, **params: Any) -> Reader:
    return registry.build("dataset", {"name": name, **params}, split=split)


def regions(reader: Reader, index: int = 0) -> list[tuple[list[list[float]], str, bool]]:
    """Sample ``index``'s annotations as written: points, text, don't care."""
    return [(a.points.tolist(), a.text, a.ignore) for a in reader.load(index).annotations]


def reasons(reader: Reader) -> list[str]:
    return sorted(p.reason for p in reader.problems)


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    document = json.loads(path.read_text())
    path.write_text(json.dumps(change(document) or document))


# ------------------------------------------------------------------------------------------------ LabelMe
def labelme_file(folder: Path, name: str, shapes: list[dict[str, Any]], **extra: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    document = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": name, "imageData": None, "imageHeight": HEIGHT, "imageWidth": WIDTH, **extra}
    (folder / f"{Path(name).stem}.json").write_text(json.dumps(document))


def test_labelme_shapes_flags_and_the_image_path(tmp_path: Path) -> None:
    folder = tmp_path / "json"
    write_images(tmp_path / "images", {"a.jpg": []})
    labelme_file(folder, "C:\\labels\\a.jpg", [
        {"label": "hi", "points": [[40, 20], [8, 10]], "shape_type": "rectangle"},
        {"label": "###", "points": [[1, 1], [9, 1], [9, 5]], "shape_type": "polygon"},
        {"label": "old", "points": [[1, 1], [9, 1], [9, 5]]},  # LabelMe 3: no shape_type
        {"label": "x", "points": [[1, 1], [9, 1], [9, 5]], "shape_type": "polygon", "difficult": True},
        {"label": "y", "points": [[5, 5], [9, 9]], "shape_type": "circle"},
    ])
    reader = read("labelme", Split(str(tmp_path / "images"), str(folder)))
    assert reader.exif == "display"  # LabelMe draws on the EXIF-rotated image
    assert [r.name for r in reader.records] == ["a.jpg"]
    assert regions(reader) == [
        (rect(8, 10, 40, 20), "hi", False),
        ([[1, 1], [9, 1], [9, 5]], "###", True),
        ([[1, 1], [9, 1], [9, 5]], "old", False),
        ([[1, 1], [9, 1], [9, 5]], "x", True),
    ]
    assert [(p.line, p.reason) for p in reader.problems] == [(5, "unsupported_shape")]


def test_labelme_decodes_embedded_image_data_when_the_file_is_absent(tmp_path: Path) -> None:
    args, split = WRITERS["labelme"](tmp_path, BOXES)
    (tmp_path / "pages" / "a.jpg").unlink()
    import base64

    edit_json(tmp_path / "pages" / "a.json", lambda d: d.update(imageData=base64.b64encode(image_bytes("a.jpg")).decode()))
    edit_json(tmp_path / "pages" / "b.json", lambda d: d.update(imageData="bm90IGFuIGltYWdl"))  # present file wins
    reader = read("labelme", split)
    assert reader.source(0) is None and reader.source(1) == tmp_path / "pages" / "b.jpg"
    sample = reader.load(0)
    assert sample.decoded.image.shape == (HEIGHT, WIDTH, 3) and sample.label_file.endswith("a.json")
    assert reader.identity(0) != reader.identity(1)


# ------------------------------------------------------------------------------------------------ Label Studio
def labelstudio_export(root: Path, tasks: list[dict[str, Any]]) -> Split:
    write_images(root / "images", {"page.jpg": [], "scan 1.jpg": []})
    (root / "export.json").write_text(json.dumps(tasks))
    return Split(str(root / "images"), str(root / "export.json"))


def rectangle(x: float, y: float, w: float, h: float, rotation: float = 0, **extra: Any) -> dict[str, Any]:
    return {"type": "rectanglelabels", "original_width": WIDTH, "original_height": HEIGHT,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": ["Text"]}, **extra}


def test_labelstudio_rectangles_turn_about_their_top_left_corner_in_pixels(tmp_path: Path) -> None:
    # 25% of 64 = 16 px wide, 25% of 48 = 12 px high, top-left at (16, 12); turned 90° clockwise (y down).
    split = labelstudio_export(tmp_path, [{"id": 1, "data": {"image": "/data/upload/3/0a1b2c3d-page.jpg"},
                                           "annotations": [{"result": [rectangle(25, 25, 25, 25), rectangle(25, 25, 25, 25, 90)]}]}])
    points = [np.round(p, 9).tolist() for p, _, _ in regions(read("label-studio", split))]
    assert points == [rect(16, 12, 32, 24), [[16, 12], [16, 28], [4, 28], [4, 12]]]


def test_labelstudio_regions_texts_and_image_names(tmp_path: Path) -> None:
    polygon = {"id": "p", "type": "polygonlabels", "original_width": WIDTH, "original_height": HEIGHT,
               "value": {"points": [[50, 50], [100, 50], [100, 100]], "polygonlabels": ["###"]}}
    text = {"id": "r", "type": "textarea", "original_width": WIDTH, "original_height": HEIGHT,
            "value": {"x": 0, "y": 0, "width": 50, "height": 50, "text": ["two", "lines"]}}
    split = labelstudio_export(tmp_path, [
        {"id": 7, "data": {"ocr": "/data/local-files/?d=scans%2Fscan%201.jpg"},
         "annotations": [{"was_cancelled": True, "result": []},
                         {"result": [rectangle(0, 0, 50, 50, id="r"), text, polygon, {"type": "choices", "value": {"choices": ["x"]}},
                                     {"id": "k", "type": "keypointlabels", "original_width": WIDTH, "original_height": HEIGHT, "value": {"x": 1, "y": 1}}]}]},
        {"id": 8, "data": {"image": "/data/upload/1/0a1b2c3d-page.jpg"}, "predictions": [{"result": [rectangle(0, 0, 9, 9)]}]},
        {"id": 9, "data": {"image": "https://example.com/missing.jpg"}, "annotations": [{"result": []}]},
    ])
    reader = read("label-studio", split)
    assert [r.name for r in reader.records] == ["scan 1.jpg"]
    assert [(t, i) for _, t, i in regions(reader)] == [("two lines", False), ("", True)]
    assert [(p.reason, p.line) for p in reader.problems] == [("unsupported_shape", 3), ("missing_gt", None), ("missing_image", None)]
    assert "#task 8" in reader.problems[1].file and "#task 9" in reader.problems[2].file


# ------------------------------------------------------------------------------------------------ PPOCRLabel
def test_ppocr_dont_care_paths_and_bad_lines(tmp_path: Path) -> None:
    write_images(tmp_path / "det", {"a.jpg": [], "b.jpg": []})
    (tmp_path / "det_gt.txt").write_text("\n".join([
        "det/a.jpg\t" + json.dumps([{"transcription": "*", "points": rect(1, 1, 9, 9)}, {"transcription": "ok", "points": rect(1, 1, 9, 9), "difficult": True},
                                    {"transcription": "kept", "points": [[1, 1], [9, 1], [9, 9], [5, 12], [1, 9]]}]),
        "C:\\Users\\me\\b.jpg\t[]",  # written on Windows, moved here: found by file name; no regions: a page without text
        "no tab here",
        "det/a.jpg\t[{\"points\": 5}]",
        "det/gone.jpg\t[]",
    ]) + "\n")
    reader = read("ppocr", Split(str(tmp_path / "det"), str(tmp_path / "det_gt.txt")))
    assert [r.name for r in reader.records] == ["a.jpg", "b.jpg"]
    assert [(t, i) for _, t, i in regions(reader)] == [("*", True), ("ok", True), ("kept", False)]
    assert [(p.line, p.reason) for p in reader.problems] == [(3, "bad_line"), (4, "duplicate"), (5, "missing_image")]


# ------------------------------------------------------------------------------------------------ COCO
def test_coco_polygons_boxes_masks_and_crowds(tmp_path: Path) -> None:
    write_images(tmp_path / "images", {"a.jpg": [], "b.jpg": []})
    document = {
        "images": [{"id": "x1", "file_name": "train/a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": "x1", "segmentation": [[1, 1, 9, 1, 9, 9], [20, 1, 30, 1, 30, 9]], "text": "two parts"},
            {"image_id": "x1", "bbox": [8, 10, 32, 10], "iscrowd": 1},
            {"image_id": "x1", "segmentation": {"counts": "abc", "size": [48, 64]}, "bbox": [1, 2, 3, 4]},
            {"image_id": "x1", "segmentation": [], "bbox": [1, 2, 3, 4], "ignore": 1, "utf8_string": "cocotext"},
            {"image_id": 99, "bbox": [1, 1, 2, 2]},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(document))
    reader = read("coco", Split(str(tmp_path / "images"), str(tmp_path / "instances.json")))
    assert [r.name for r in reader.records] == ["a.jpg", "b.jpg"] and regions(reader, 1) == []
    assert regions(reader) == [
        ([[1, 1], [9, 1], [9, 9]], "two parts", False), ([[20, 1], [30, 1], [30, 9]], "two parts", False),
        (rect(8, 10, 40, 20), "", True), (rect(1, 2, 4, 6), "", False), (rect(1, 2, 4, 6), "cocotext", True),
    ]
    assert [(p.line, p.reason) for p in reader.problems] == [(3, "rle_segmentation"), (5, "bad_entry")]


# ------------------------------------------------------------------------------------------------ docTR
def test_doctr_lists_and_class_tables(tmp_path: Path) -> None:
    write_images(tmp_path / "images", {"a.jpg": [], "b.jpg": []})
    labels = {"a.jpg": {"img_dimensions": [48, 64], "img_hash": "x", "polygons": [rect(1, 1, 9, 9)]},
              "b.jpg": {"polygons": {"words": [rect(1, 1, 9, 9)], "artefacts": [rect(2, 2, 8, 8), [[1, 2, 3]]]}}}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    reader = read("doctr", Split(str(tmp_path)))
    assert regions(reader, 0) == [(rect(1, 1, 9, 9), "", False)]
    assert regions(reader, 1) == [(rect(1, 1, 9, 9), "words", False), (rect(2, 2, 8, 8), "artefacts", False)]
    assert [(p.line, p.reason) for p in reader.problems] == [(3, "bad_points")]


# ------------------------------------------------------------------------------------------------ Total-Text
def test_totaltext_records_wrapped_negative_and_dont_care(tmp_path: Path) -> None:
    write_images(tmp_path / "img", {"img11.jpg": [], "img12.jpg": []})
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "poly_gt_img11.txt").write_text(
        "x: [[ 35  66 110 146 182\n 204 160 120  82  50]], y: [[ 9  5 -2  5 10 30 26 20 24 28]], ornt: [u'c'], transcriptions: [u\"it's\"]\n"
        "x: [[1 9 9 1]], y: [[1 1 9 9]], ornt: [u'#'], transcriptions: [u'#']\n"
        "x: [[1 9 9]], y: [[1 1]], ornt: [u'h'], transcriptions: [u'short']\n"
        "x: [[1 9 9 1]], y: [[1 1 9 9]], ornt: [u'h'], transcriptions: [u'a,b']\n"
    )
    (tmp_path / "gt" / "img12.txt").write_text("1,1,9,1,9,9,1,9,hello, world\n1,1,9,1,9,9,1,9,#\n1,1,9\n")  # the comma form
    reader = read("totaltext", Split(str(tmp_path / "img"), str(tmp_path / "gt")))
    first = regions(reader, 0)
    assert first[0] == ([[35, 9], [66, 5], [110, -2], [146, 5], [182, 10], [204, 30], [160, 26], [120, 20], [82, 24], [50, 28]], "it's", False)
    assert first[1:] == [(rect(1, 1, 9, 9), "#", True), (rect(1, 1, 9, 9), "a,b", False)]
    assert regions(reader, 1) == [(rect(1, 1, 9, 9), "hello, world", False), (rect(1, 1, 9, 9), "#", True)]
    assert [(Path(p.file).name, p.line, p.reason) for p in reader.problems] == [("poly_gt_img11.txt", 4, "bad_line"), ("img12.txt", 3, "bad_line")]


# ------------------------------------------------------------------------------------------------ CTW1500
def test_ctw1500_offsets_text_lines_and_xml(tmp_path: Path) -> None:
    _, split = write_ctw1500(tmp_path / "train", BOXES, release="train")
    first = regions(read("ctw1500", split))
    assert len(first) == 1 and first[0][1:] == ("", False)  # the first release has no text and no don't care
    np.testing.assert_allclose(np.array(first[0][0])[[0, 6, 7, 13]], rect(8, 10, 40, 20), atol=1e-4)  # offsets + (xmin, ymin)

    write_images(tmp_path / "test" / "images", {"1001.jpg": [], "0200.jpg": []})
    (tmp_path / "test" / "gts").mkdir()
    (tmp_path / "test" / "gts" / "0001001.txt").write_text("1,1,9,1,9,9,1,9,####1,000 km\n1,1,9,1,9,9,1,9,#######\n1,2,3,####x\n")
    (tmp_path / "test" / "gts" / "0200.xml").write_text(
        "<Annotations><image file=\"0200.jpg\"><box height=\"8\" left=\"1\" top=\"1\" width=\"8\"><label>OLATHE</label>"
        "<segs>1,1,9,1,9,9,1,9</segs><pts x=\"2\" y=\"2\" /></box><box><label>###</label><segs>1,1,9,1,9,9</segs></box></image></Annotations>")
    (tmp_path / "test" / "gts" / "0300.txt").write_text("1,1,9,1,9,9,1,9,####orphan\n")
    reader = read("ctw1500", Split(str(tmp_path / "test")))
    assert [r.name for r in reader.records] == ["0200.jpg", "1001.jpg"]
    assert regions(reader, 0) == [(rect(1, 1, 9, 9), "OLATHE", False), ([[1, 1], [9, 1], [9, 9]], "###", True)]
    assert regions(reader, 1) == [(rect(1, 1, 9, 9), "1,000 km", False), (rect(1, 1, 9, 9), "###", True)]
    assert [(Path(p.file).name, p.line, p.reason) for p in reader.problems] == [("0001001.txt", 3, "bad_line"), ("0300.txt", None, "missing_image")]


# ------------------------------------------------------------------------------------------------ damage
def _truncate(path: Path) -> None:
    """Cut the file inside its last line or value, as an interrupted copy or save leaves it."""
    path.write_bytes(path.read_bytes()[:-20])


def _lines(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")


def _first_region(document: Any, key: str, value: Any) -> None:
    """Set ``key`` of the first region, wherever the format keeps it."""
    document["shapes"][0][key] = value


NAN = float("nan")
#: (format, damage, what to do to the fixture written under ROOT, expected problem counts or an error message).
DAMAGE: list[tuple[str, str, Callable[[Path], None], dict[str, int] | str]] = [
    ("labelme", "truncated", lambda r: _truncate(r / "pages" / "a.json"), {"bad_file": 1}),
    ("labelme", "wrong-types", lambda r: edit_json(r / "pages" / "a.json", lambda d: d["shapes"].__setitem__(0, 5) or d["shapes"][1].update(points="abc")), {"bad_entry": 1, "bad_points": 1}),
    ("labelme", "missing-keys", lambda r: edit_json(r / "pages" / "b.json", lambda d: d.pop("shapes") and None), {"bad_entry": 1}),
    ("labelme", "non-finite", lambda r: edit_json(r / "pages" / "a.json", lambda d: d["shapes"][0].update(points=[[NAN, 1], [9, math.inf]])), {"non_finite": 1}),
    ("labelme", "missing-image", lambda r: (r / "pages" / "a.jpg").unlink(), {"missing_image": 1}),
    ("label-studio", "truncated", lambda r: _truncate(r / "export.json"), "invalid JSON"),
    ("label-studio", "wrong-types", lambda r: edit_json(r / "export.json", lambda d: d[0]["annotations"][0]["result"][0]["value"].update(x="left") or d[0]["annotations"][0]["result"][2].update(original_width="wide")), {"bad_points": 1, "bad_entry": 1}),
    ("label-studio", "missing-keys", lambda r: edit_json(r / "export.json", lambda d: d[0].pop("data") and None), {"bad_entry": 1}),
    ("label-studio", "non-finite", lambda r: edit_json(r / "export.json", lambda d: d[0]["annotations"][0]["result"][0]["value"].update(x=NAN)), {"non_finite": 1}),
    ("label-studio", "missing-image", lambda r: (r / "images" / "b.jpg").unlink(), {"missing_image": 1}),
    ("ppocr", "truncated", lambda r: _truncate(r / "images" / "Label.txt"), {"bad_line": 1}),
    ("ppocr", "wrong-types", lambda r: _lines(r / "images" / "Label.txt", lambda ls: [ls[0].replace('"points": [[8', '"points": [["eight"', 1), ls[1]]), {"bad_points": 1}),
    ("ppocr", "missing-keys", lambda r: _lines(r / "images" / "Label.txt", lambda ls: [ls[0].replace('"points"', '"pts"'), ls[1].replace("\t", " ")]), {"bad_points": 2, "bad_line": 1}),
    ("ppocr", "non-finite", lambda r: _lines(r / "images" / "Label.txt", lambda ls: [ls[0].replace("[[8, 10]", "[[NaN, 10]"), ls[1]]), {"non_finite": 1}),
    ("ppocr", "missing-image", lambda r: (r / "images" / "a.jpg").unlink(), {"missing_image": 1}),
    ("coco", "truncated", lambda r: _truncate(r / "instances.json"), "invalid JSON"),
    ("coco", "wrong-types", lambda r: edit_json(r / "instances.json", lambda d: d["annotations"][0].update(bbox="wide") or d["annotations"][1].update(image_id=[1])), {"bad_points": 1, "bad_entry": 1}),
    ("coco", "missing-keys", lambda r: edit_json(r / "instances.json", lambda d: d.pop("annotations") and None), "'annotations'"),
    ("coco", "non-finite", lambda r: edit_json(r / "instances.json", lambda d: d["annotations"][0].update(bbox=[8, NAN, 32, 10])), {"non_finite": 1}),
    ("coco", "missing-image", lambda r: (r / "images" / "b.jpg").unlink(), {"missing_image": 1}),
    ("doctr", "truncated", lambda r: _truncate(r / "labels.json"), "invalid JSON"),
    ("doctr", "wrong-types", lambda r: edit_json(r / "labels.json", lambda d: d["a.jpg"].update(polygons="many") or d["b.jpg"]["polygons"].__setitem__(0, [[1, 2, 3]])), {"bad_entry": 1, "bad_points": 1}),
    ("doctr", "missing-keys", lambda r: edit_json(r / "labels.json", lambda d: d["a.jpg"].pop("polygons") and None), {"bad_entry": 1}),
    ("doctr", "non-finite", lambda r: edit_json(r / "labels.json", lambda d: d["a.jpg"]["polygons"][0].__setitem__(0, [math.inf, 1])), {"non_finite": 1}),
    ("doctr", "missing-image", lambda r: (r / "images" / "a.jpg").unlink(), {"missing_image": 1}),
    ("totaltext", "truncated", lambda r: _truncate(r / "gts" / "poly_gt_b.txt"), {"bad_line": 1}),
    ("totaltext", "wrong-types", lambda r: _lines(r / "gts" / "poly_gt_a.txt", lambda ls: [ls[0].replace("x: [[", "x: [[left "), ls[1]]), {"bad_line": 1}),
    ("totaltext", "missing-keys", lambda r: _lines(r / "gts" / "poly_gt_a.txt", lambda ls: [ls[0].split(", ornt")[0], ls[1]]), {"bad_line": 1}),
    ("totaltext", "non-finite", lambda r: _lines(r / "gts" / "poly_gt_a.txt", lambda ls: [ls[0].replace("x: [[  8", "x: [[nan"), ls[1]]), {"non_finite": 1}),
    ("totaltext", "missing-image", lambda r: (r / "images" / "a.jpg").unlink(), {"missing_image": 1}),
    ("ctw1500", "truncated", lambda r: _truncate(r / "gts" / "000a.txt"), {"bad_line": 1}),
    ("ctw1500", "wrong-types", lambda r: _lines(r / "gts" / "000a.txt", lambda ls: ["eight," + ls[0], ls[1]]), {"bad_line": 1}),
    ("ctw1500", "missing-keys", lambda r: _lines(r / "gts" / "000b.txt", lambda ls: [ls[0].split(",####")[0], *ls[1:]]), {"bad_line": 1}),
    ("ctw1500", "non-finite", lambda r: _lines(r / "gts" / "000a.txt", lambda ls: ["nan" + ls[0][1:], ls[1]]), {"non_finite": 1}),
    ("ctw1500", "missing-image", lambda r: (r / "images" / "b.jpg").unlink(), {"missing_image": 1}),
]


def test_every_format_has_every_kind_of_damage() -> None:
    kinds = {"truncated", "wrong-types", "missing-keys", "non-finite", "missing-image"}
    external = {name for name in WRITERS if name not in ("icdar2015", "receipt-json")}
    assert {(name, kind) for name, kind, _, _ in DAMAGE} == {(name, kind) for name in external for kind in kinds}


@pytest.mark.parametrize(("name", "kind", "damage", "expected"), DAMAGE, ids=[f"{n}-{k}" for n, k, _, _ in DAMAGE])
def test_damage_is_reported_counted_and_never_a_traceback(
    name: str, kind: str, damage: Callable[[Path], None], expected: dict[str, int] | str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, split = WRITERS[name](tmp_path, BOXES)
    damage(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["clean-data", *args, "--format", name, "--check", "--workers", "1"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if isinstance(expected, str):  # the split's one annotation file is unreadable: one error line, exit 2
        assert exit_.value.code == 2 and err.count("error:") == 1 and expected in err
        with pytest.raises(DbtkError, match=expected):
            read(name, split)
        return
    assert exit_.value.code == 1, out + err  # problems found
    reader = read(name, split)
    report = clean.scan_split(reader, str(tmp_path), name, workers=1)
    assert {reason: report.counts[reason] for reason in expected} == expected, report.counts
    assert all(p.file and p.detail for p in reader.problems)
    for reason in expected:
        assert reason in out  # the table names it


def test_readers_need_their_files(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for name, message in [("label-studio", "needs a split table"), ("coco", "needs a split table"), ("ppocr", "label file not found"),
                          ("doctr", "annotation file not found"), ("totaltext", "label folder not found"), ("ctw1500", "label folder not found")]:
        with pytest.raises(DbtkError, match=message):
            read(name, Split(str(tmp_path / "images") if name in ("label-studio", "coco", "ppocr") else str(tmp_path)))


def test_exif_rotated_photos_are_labelled_in_the_display_frame_by_labelme(tmp_path: Path) -> None:
    """A photo stored landscape with EXIF orientation 6 shows portrait; LabelMe's points refer to what it showed."""
    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(jpeg_bytes(text_image(64, 48), orientation=6))
    labelme_file(folder, "photo.jpg", [{"label": "t", "points": [[2, 40], [30, 60]], "shape_type": "rectangle"}])
    reader = read("labelme", Split(str(folder)))
    labels = prepare(reader.load(0), reader.exif)
    assert labels.image.shape[:2] == (64, 48) and not labels.findings  # inside the portrait image, untouched


# ------------------------------------------------------------------------------------------------ names
#: Splits or shards kept as folders: two images with one file name, and a third whose name the first flattened
#: name would take.
SHARDS = {"sub1/x.jpg": [(rect(2, 2, 30, 12), "one", False)], "sub2/x.jpg": [(rect(4, 20, 40, 30), "two", False)],
          "sub1_x.jpg": [(rect(6, 6, 20, 16), "three", False)]}


@pytest.mark.parametrize("name", ["coco", "doctr", "labelme", "ppocr", "receipt-json"])
def test_images_sharing_a_file_name_in_sub_folders_are_two_samples_with_distinct_names(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Names key the written copy, prediction files and caches: ``sub1/x.jpg`` and ``sub2/x.jpg`` are both kept
    (neither is a 'duplicate'), each under its own flat name, and convert writes all three and reads them back."""
    from tests.test_convert import assert_same, convert, labels_of, written

    args, split = WRITERS[name](tmp_path / "src", SHARDS)
    reader = read(name, split)
    assert reasons(reader) == []
    names = {min(x for x, _ in regions(reader, i)[0][0]): reader.name(i) for i in range(len(reader))}  # the left edges of SHARDS
    assert names[4] == "sub2_x.jpg" and {names[2], names[6]} == {"sub1_x.jpg", "sub1_x-2.jpg"}
    expected = labels_of(name, split)
    for target in ("coco", "icdar2015", "labelme", "ppocr"):
        convert(capsys, args, name, target, tmp_path / target)
        assert_same(labels_of(target, written(target, tmp_path / target)[1]), expected)


def test_one_image_listed_twice_is_a_duplicate_and_its_labels_are_not_called_orphans(tmp_path: Path) -> None:
    """The same file under two COCO ids: the second entry is the duplicate, named by its file; its annotations are
    not reported a second time as 'image_id not in images'."""
    _args, split = WRITERS["coco"](tmp_path, {"a.jpg": [(rect(2, 2, 30, 12), "a", False)]})
    def twice(document: dict[str, Any]) -> None:
        document["images"].append({"id": 2, "file_name": "a.jpg"})
        document["annotations"].append({"id": 9, "image_id": 2, "bbox": [1, 1, 5, 5]})
    edit_json(tmp_path / "instances.json", twice)
    reader = read("coco", split)
    assert len(reader) == 1 and reasons(reader) == ["duplicate"]


# ------------------------------------------------------------------------------------------------ refusals that say why
def test_an_annotation_file_listing_nothing_is_refused_in_the_formats_own_terms(tmp_path: Path) -> None:
    """An empty COCO, Label Studio, docTR or receipt-JSON document: said by the reader, which knows the format,
    not left to a generic "no labelled images" hint about ICDAR folders."""
    (tmp_path / "images").mkdir()
    empty = {"coco": {"images": [], "annotations": []}, "label-studio": [], "doctr": {}, "receipt-json": {"images": {}}}
    for name, document in empty.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(document))
        split = Split(str(tmp_path / "images"), str(path))
        with pytest.raises(DbtkError, match=rf"{path.name} (lists|labels) no images") as caught:
            read(name, split)
        assert "icdar" not in str(caught.value.hint or "").lower()


def test_a_file_where_a_folder_belongs_and_a_folder_of_another_format_are_named(tmp_path: Path) -> None:
    from dbtk.data.formats import image_files

    args, split = WRITERS["labelme"](tmp_path / "lm", BOXES)
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(DbtkError, match=r"label folder expected, but .*labels.json is a file"):
        read("labelme", Split(split.images, str(tmp_path / "labels.json")))
    for name in ("labelme", "ppocr", "doctr"):
        root = tmp_path / f"as-{name}"
        _args, split = WRITERS[name](root, BOXES)
        folder = Path(split.images) if name != "doctr" else root
        with pytest.raises(DbtkError, match="(image|label) folder not found") as caught:
            read("icdar2015", Split(str(folder)))
        assert f"did you mean format '{name}'" in str(caught.value.hint)
    (tmp_path / "none").mkdir()
    with pytest.raises(DbtkError, match="no images found") as caught:  # predict, export --calibrate, --images
        image_files([str(tmp_path / "none")])
    assert "folders holding them" in str(caught.value.hint)


@pytest.mark.parametrize(("fmt", "hint"), [("ppocr", "docs/data.md shows the files each format's reader expects"),
                                           ("icdar2015", "an icdar2015 split is DIR/images/NAME.jpg")])
def test_an_empty_split_gets_its_own_formats_hint(tmp_path: Path, fmt: str, hint: str) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "gts").mkdir()
    (tmp_path / "Label.txt").write_text("")
    proc = run_dbtk("clean-data", str(tmp_path), "--format", fmt, "--check")
    assert proc.returncode == 2 and "error: nothing to check: no labelled images" in proc.stderr
    assert f"hint: {hint}" in proc.stderr and "Traceback" not in proc.stderr
