"""Garbage in ICDAR txt and receipt JSON labels: readers never crash, every bad record is reported with its
file and line (or word) and counted, and training samples still come out."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbtk import recipe as recipes
from dbtk.data.clean import scan_image
from dbtk.data.dataset import DetectionDataset
from dbtk.data.formats import ICDAR2015, ReceiptJSON
from dbtk.errors import DbtkError
from tests.data_fixtures import jpeg_bytes, text_image
from tests.reliability.conftest import TALLY, run_cli

IMAGE = jpeg_bytes(text_image(64, 48))
DATA = recipes.Data(image_size=64, augment=True)
NUMBER = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 0.0]))

def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


# (line text, what the parser must do): "ok" parses, "parse" is reported by the reader at that line,
# "geometry" parses but repair must flag it (at that line) when scanning.
def _coords(values: list[float]) -> str:
    return ",".join(repr(v) if isinstance(v, float) else str(v) for v in values)


LINE = st.one_of(
    st.tuples(st.lists(st.floats(0, 60), min_size=8, max_size=8).map(lambda v: _coords(v) + ",word"), st.just("ok")),
    st.tuples(st.lists(NUMBER, min_size=8, max_size=8).filter(lambda v: not all(map(math.isfinite, v))).map(lambda v: _coords(v) + ",nan"), st.just("geometry")),
    st.tuples(st.lists(st.floats(0, 60), min_size=1, max_size=7).map(lambda v: ",".join(map(str, v))), st.just("parse")),
    st.tuples(st.text(st.characters(blacklist_characters=",\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), min_size=1, max_size=30)
              .filter(lambda t: t.strip() != "" and _not_a_number(t)).map(lambda t: t + ",1,2,3,4,5,6,7,x"), st.just("parse")),
    st.tuples(st.just(""), st.just("blank")),
    st.tuples(st.lists(st.floats(0, 60), min_size=10, max_size=10).map(lambda v: _coords(v)), st.just("ok")),  # 9th field is text
)


def _write_icdar(root: Path, content: bytes) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "gts").mkdir(exist_ok=True)
    (root / "images" / "page.jpg").write_bytes(IMAGE)
    (root / "images" / "good.jpg").write_bytes(IMAGE)  # a usable neighbour: training replaces unusable samples
    (root / "gts" / "gt_good.txt").write_text("8,10,40,10,40,20,8,20,good\n")
    label = root / "gts" / "gt_page.txt"
    label.write_bytes(content)
    return label


def _sample_ok(reader: Any) -> None:
    dataset = DetectionDataset(reader, DATA, train=True, seed=1)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample is not None and sample["image"].shape == (64, 64, 3)


def fuzz_icdar(tmp_path: Path, examples: int) -> None:
    counter = iter(range(10**9))

    @settings(max_examples=examples, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(lines=st.lists(LINE, max_size=12), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    def check(lines: list[tuple[str, str]], encoding: str) -> None:
        root = tmp_path / f"case{next(counter)}"
        text = "\n".join(line for line, _ in lines)
        label = _write_icdar(root, text.encode(encoding, errors="replace"))
        reader = ICDAR2015(recipes.Split(str(root)))
        TALLY["annotation files (icdar txt)"] += 1
        TALLY["annotation lines"] += len(lines)
        assert len(reader) == 2
        if encoding.startswith("utf-8"):
            parse_lines = {n for n, (_, kind) in enumerate(lines, start=1) if kind == "parse"}
            reported = {p.line for p in reader.problems if p.file == str(label)}
            assert parse_lines <= reported, (parse_lines, reported, reader.problems)
            result = scan_image(reader, [r.name for r in reader.records].index("page.jpg"))
            flagged = {line for reason, line, _, _ in result.findings if reason == "non_finite"}
            assert {n for n, (_, kind) in enumerate(lines, start=1) if kind == "geometry"} <= flagged | reported
        elif encoding == "utf-16" and text:
            assert any(p.reason == "encoding" for p in reader.problems)
        _sample_ok(reader)

    check()


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True), st.text(max_size=6)),
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(st.text(max_size=5), children, max_size=4)),
    max_leaves=12,
)
POINTS = st.one_of(
    st.lists(st.lists(st.floats(0, 60), min_size=2, max_size=2), min_size=3, max_size=8),  # valid
    st.lists(st.lists(NUMBER, min_size=2, max_size=2), min_size=0, max_size=5),
    st.lists(st.lists(st.floats(0, 60), min_size=1, max_size=3), min_size=1, max_size=5),  # wrong point arity
    JSON_VALUE,
)
WORD = st.one_of(st.fixed_dictionaries({"points": POINTS}, optional={"transcription": st.text(max_size=5)}), JSON_VALUE)


def fuzz_receipt_json(tmp_path: Path, examples: int) -> None:
    counter = iter(range(10**9))

    @settings(max_examples=examples, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(words=st.dictionaries(st.text(min_size=1, max_size=4), WORD, max_size=8), entry_garbage=st.booleans(),
           truncate=st.one_of(st.none(), st.integers(0, 200)))
    def check(words: dict[str, Any], entry_garbage: bool, truncate: int | None) -> None:
        root = tmp_path / f"case{next(counter)}"
        (root / "images").mkdir(parents=True)
        (root / "images" / "page.jpg").write_bytes(IMAGE)
        (root / "images" / "good.jpg").write_bytes(IMAGE)
        good = {"words": {"1": {"points": [[8, 10], [40, 10], [40, 20], [8, 20]]}}}
        document = {"images": {"page.jpg": "garbage" if entry_garbage else {"words": words}, "good.jpg": good, "missing.jpg": {"words": {}}}}
        text = json.dumps(document)
        if truncate is not None:
            text = text[:truncate]
        label = root / "labels.json"
        label.write_text(text, encoding="utf-8")
        TALLY["annotation files (receipt json)"] += 1
        TALLY["receipt words"] += len(words)
        try:
            reader = ReceiptJSON(recipes.Split(str(root / "images"), str(label)))
        except DbtkError as exc:
            assert truncate is not None and str(label) in str(exc)  # only an unparseable file is refused, by name
            return
        assert any(p.reason == "missing_image" for p in reader.problems)
        if entry_garbage:
            assert any(p.reason == "bad_entry" and "page.jpg" in p.file for p in reader.problems)
        else:
            bad = [p for p in reader.problems if p.reason == "bad_points"]
            page = [r.name for r in reader.records].index("page.jpg")
            assert len(bad) + len(reader.records[page].annotations) == len(words)
            assert all(p.line is not None and "page.jpg" in p.file for p in bad)
            scan_image(reader, page)
        _sample_ok(reader)

    check()


def test_fuzzed_icdar_labels(tmp_path: Path) -> None:
    fuzz_icdar(tmp_path, 80)


def test_fuzzed_receipt_json(tmp_path: Path) -> None:
    fuzz_receipt_json(tmp_path, 80)


@pytest.mark.slow
def test_fuzzed_labels_many(tmp_path: Path) -> None:
    fuzz_icdar(tmp_path / "icdar", 1000)
    fuzz_receipt_json(tmp_path / "json", 1000)


def test_clean_data_reports_every_bad_line(tmp_path: Path) -> None:
    lines = ["1,1,40,1,40,20,1,20,ok", "nan,1,40,1,40,20,1,20,nan", "1,2,3", "1e30,1,2e30,1,2e30,20,1e30,20,huge",
             "a,b,c,d,e,f,g,h,letters", "", "5,5,5,5,5,5,5,5,point", "1,1,40,1,40,20,1,20"]
    _write_icdar(tmp_path / "data", "\n".join(lines).encode())
    report = tmp_path / "report.json"
    result = run_cli(["clean-data", str(tmp_path / "data"), "--check", "--report", str(report), "--workers", "1"])
    TALLY["annotation files (clean-data)"] += 1
    assert result.code == 1 and "Traceback" not in result.stderr
    data = json.loads(report.read_text())
    where = json.dumps(data)
    for number in (2, 3, 4, 5, 7):  # NaN, too few fields, outside the image, non-numeric, collapsed to a point
        assert f"gt_page.txt:{number}" in where, (number, where)
