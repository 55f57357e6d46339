"""``dbtk convert``: every reader to every writable format and back keeps every polygon (exactly, as float32) and
every don't-care flag; SRC is never modified; the same pages scored in any two formats give the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dbtk.cli import main
from dbtk.data.clean import WRITABLE
from dbtk.data.labels import prepare
from dbtk.recipe import Split
from dbtk.registry import registry
from tests.conftest import run_dbtk
from tests.external_fixtures import BOXES, CURVED, HOLDS_CURVES, WRITERS, Pages, fixture, rect, write_labelme
from tests.test_data import _tree_digest as tree_digest

READERS = sorted(WRITERS)
Labels = dict[str, list[tuple[np.ndarray, bool]]]


def dbtk(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (what the console script does) and return (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def written(target: str, out: Path) -> tuple[list[str], Split]:
    """Where ``dbtk convert --to TARGET --out OUT`` puts the copy (docs/data.md), as CLI arguments and a split."""
    if target in ("coco", "receipt-json"):
        images, labels = out / "images", out / "annotations.json"
        return [str(images), "--annotations", str(labels)], Split(str(images), str(labels))
    folder = out if target == "icdar2015" else out / "images"
    return [str(folder)], Split(str(folder))


def labels_of(name: str, split: Split) -> Labels:
    """Every image's polygons and don't-care flags after the label path: what training sees."""
    reader = registry.build("dataset", {"name": name}, split=split)
    assert not reader.problems, reader.problems
    found = {}
    for index in range(len(reader)):
        prepared = prepare(reader.load(index), reader.exif)
        found[reader.name(index)] = list(zip(prepared.polygons, prepared.ignore, strict=True))
    return found


def assert_same(actual: Labels, expected: Labels) -> None:
    assert sorted(actual) == sorted(expected)
    for name, regions in expected.items():
        assert [ignore for _, ignore in actual[name]] == [ignore for _, ignore in regions], name
        for (got, _), (want, _) in zip(actual[name], regions, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=name)


def convert(capsys: pytest.CaptureFixture[str], args: list[str], source: str, target: str, out: Path) -> str:
    code, stdout, stderr = dbtk(capsys, "convert", *args, "--from", source, "--to", target, "--out", str(out), "--workers", "1")
    assert code == 0, stdout + stderr
    return stderr


def test_the_command_offers_what_the_writer_writes() -> None:
    from dbtk.cli.convert import WRITABLE as OFFERED

    assert OFFERED == WRITABLE


@pytest.mark.parametrize("target", WRITABLE)
@pytest.mark.parametrize("source", READERS)
def test_every_reader_converts_to_every_writable_format(source: str, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args, split = fixture(source)(tmp_path / "src")
    before = tree_digest(tmp_path / "src")
    expected = labels_of(source, split)
    stderr = convert(capsys, args, source, target, tmp_path / "out")
    assert tree_digest(tmp_path / "src") == before  # convert only reads SRC
    actual = labels_of(target, written(target, tmp_path / "out")[1])
    if target == "icdar2015" and source in HOLDS_CURVES:  # ICDAR2015 lines hold 4 points: the curve, squashed, and said
        curves = sum(len(p) != 4 for regions in expected.values() for p, _ in regions)
        assert f"{curves} longer polygon(s) were written as their minimum-area rectangles" in " ".join(stderr.split())
        assert all(len(p) == 4 for regions in actual.values() for p, _ in regions)
        expected = {name: [(p, i) for p, i in regions if len(p) == 4] for name, regions in expected.items()}
        actual = {name: [(p, i) for p, i in regions if any(np.array_equal(p, q) for q, _ in expected[name])] for name, regions in actual.items()}
    assert_same(actual, expected)


@pytest.mark.parametrize(("here", "there"), [(a, b) for a in WRITABLE for b in WRITABLE if a != b])
def test_there_and_back_keeps_every_polygon_and_flag(here: str, there: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pages = BOXES if "icdar2015" in (here, there) else CURVED  # ICDAR2015 lines hold 4 points
    args, split = WRITERS[here](tmp_path / "src", pages)
    convert(capsys, args, here, there, tmp_path / "there")
    there_args, _ = written(there, tmp_path / "there")
    convert(capsys, there_args, there, here, tmp_path / "back")
    assert_same(labels_of(here, written(here, tmp_path / "back")[1]), labels_of(here, split))


def _predictions(folder: Path) -> Path:
    """The same detections for every format: hits, a near miss, a false positive, one inside a don't-care region."""
    folder.mkdir()
    detections = {
        "a.jpg": [rect(8, 10, 40, 20), rect(9, 31, 29, 39), rect(50, 40, 60, 46)],
        "b.jpg": [rect(5, 5, 58, 15), rect(12, 2, 20, 8)],
    }
    for name, boxes in detections.items():
        (folder / f"{Path(name).stem}.json").write_text(json.dumps({"image": name, "detections": [{"points": b, "score": 0.9} for b in boxes]}))
    return folder


@pytest.mark.parametrize(("pages", "formats"), [
    (BOXES, [n for n in READERS if n != "doctr"]),  # doctr has no don't care
    ({name: [r for r in regions if not r[2]] for name, regions in BOXES.items()}, READERS),
], ids=["with-dont-care", "every-format"])
def test_eval_pred_scores_the_same_pages_alike_in_every_format(pages: Pages, formats: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictions = _predictions(tmp_path / "pred")
    scores = {}
    for name in formats:
        args, _ = WRITERS[name](tmp_path / name, pages)
        code, stdout, stderr = dbtk(capsys, "eval", "--pred", str(predictions), "--data", *args, "--format", name, "--json")
        assert code == 0, stderr
        result = json.loads(stdout)
        scores[name] = {key: result[key] for key in ("precision", "recall", "hmean", "matched", "gt_care", "det_care", "images")}
    first = scores[formats[0]]
    assert 0 < first["hmean"] < 1  # a score that can tell formats apart
    assert all(score == first for score in scores.values()), scores


def test_convert_reports_like_clean_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pages: Pages = {"a.jpg": [(rect(8, 10, 40, 20), "hello", False), (rect(50, 10, 90, 20), "half out", False), ([[1, 1], [5, 5], [1, 5], [5, 1]], "bowtie", False)],
                    "b.jpg": [([[float("nan"), 1], [5, 1], [5, 9]], "nan", False)]}
    args, _ = write_labelme(tmp_path / "src", pages)
    code, _, _ = dbtk(capsys, "clean-data", *args, "--format", "labelme", "--check", "--report", str(tmp_path / "clean.json"), "--workers", "1")
    assert code == 1
    code, stdout, _ = dbtk(capsys, "convert", *args, "--from", "labelme", "--to", "coco", "--out", str(tmp_path / "out"), "--report", str(tmp_path / "convert.json"), "--workers", "1")
    assert code == 0 and "out_of_bounds" in stdout and "self_intersection" in stdout
    report = json.loads((tmp_path / "convert.json").read_text())
    assert report == json.loads((tmp_path / "clean.json").read_text())
    assert report["problems"] == {"non_finite": 1, "no_valid_polygons": 1, "out_of_bounds": 1, "self_intersection": 1}
    assert labels_of("coco", written("coco", tmp_path / "out")[1]).keys() == {"a.jpg"}  # b.jpg has nothing to learn from


def test_embedded_labelme_images_are_written_as_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args, split = write_labelme(tmp_path / "src", BOXES, embed=True)
    assert not list((tmp_path / "src" / "pages").glob("*.jpg"))
    convert(capsys, args, "labelme", "labelme", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "images").glob("*.jpg")) == ["a.jpg", "b.jpg"]
    assert_same(labels_of("labelme", written("labelme", tmp_path / "out")[1]), labels_of("labelme", split))


@pytest.mark.parametrize(("extra", "message"), [
    (["--to", "coco", "--out", "{src}/copy"], "overlaps"),
    (["--to", "coco", "--out", "{full}"], "is not empty"),
    (["--to", "yolo", "--out", "{new}"], "'yolo' is not one of"),
    (["--from", "labelmee", "--to", "coco", "--out", "{new}"], "did you mean 'labelme'"),
    (["--to", "coco", "--out", "{new}", "--report", "{new}/annotations.json"], "lies inside --out"),  # the COCO file itself
    (["--to", "coco", "--out", "{new}", "--report", "{new}"], "lies inside --out"),
])
def test_bad_invocations_are_one_error_line(extra: list[str], message: str, tmp_path: Path) -> None:
    args, _ = write_labelme(tmp_path / "src", BOXES)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("keep me")
    values = {"src": args[0], "full": str(tmp_path / "full"), "new": str(tmp_path / "new")}
    argv = [part.format(**values) for part in extra]
    argv = argv if "--from" in argv else ["--from", "labelme", *argv]
    before = tree_digest(tmp_path / "src")
    proc = run_dbtk("convert", *args, *argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1 and message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert tree_digest(tmp_path / "src") == before and (tmp_path / "full" / "old.txt").read_text() == "keep me"
    assert not (tmp_path / "new").exists()  # refused before anything is written


def test_a_name_the_output_format_cannot_hold_is_reported_and_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A PPOCR line is ``PATH<TAB>JSON``: a tab or a line break in a file name would write lines that read back as
    other images (or none). Such an image is counted and reported (``unwritable_name``), not written; the rest
    convert and read back whole, and formats that hold any name (COCO) keep it."""
    pages = {"tab\tname.jpg": BOXES["a.jpg"], "new\nline.jpg": BOXES["a.jpg"], "cr\rname.jpg": BOXES["a.jpg"], "normal.jpg": BOXES["a.jpg"]}
    args, split = WRITERS["icdar2015"](tmp_path / "src", pages)
    report = tmp_path / "report.json"
    code, _stdout, stderr = dbtk(capsys, "convert", *args, "--from", "icdar2015", "--to", "ppocr", "--out", str(tmp_path / "pp"),
                                 "--report", str(report), "--workers", "1")
    assert code == 0, stderr
    assert json.loads(report.read_text())["problems"] == {"unwritable_name": 3}
    assert sorted(labels_of("ppocr", written("ppocr", tmp_path / "pp")[1])) == ["normal.jpg"]
    convert(capsys, args, "icdar2015", "coco", tmp_path / "coco")
    assert len(labels_of("coco", written("coco", tmp_path / "coco")[1])) == 4
