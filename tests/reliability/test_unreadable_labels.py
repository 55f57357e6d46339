"""An image whose every label is unreadable is not a page without text: one label path skips it everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_dbtk
from tests.data_fixtures import GOOD_LINE, jpeg_bytes, text_image, write_icdar
from tests.test_label_path import _training_view

pytestmark = pytest.mark.reliability


def test_an_image_whose_labels_are_all_unreadable_is_skipped_everywhere(tmp_path: Path) -> None:
    """Not a negative page: clean-data, training and eval skip it as no_valid_polygons, like an image whose every
    polygon is invalid; an image with an empty label file stays a negative everywhere."""
    image = jpeg_bytes(text_image())
    root = write_icdar(tmp_path / "set", {
        "ok.jpg": (image, GOOD_LINE + "\n"),
        "unreadable.jpg": (image, "1,2,3\nx,1,2,3,4,5,6,7,text\n"),
        "negative.jpg": (image, ""),
    })
    report_path = tmp_path / "report.json"
    check = run_dbtk("clean-data", str(root), "--check", "--report", str(report_path), "--workers", "1")
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    report = json.loads(report_path.read_text())
    clean_skipped = {u["image"]: u["reason"] for u in report["unusable_images"]}
    assert report["problems"]["bad_line"] == 2

    train_skipped, _ = _training_view(root)

    predictions = tmp_path / "pred"
    predictions.mkdir()
    (predictions / "res_ok.txt").write_text(GOOD_LINE + "\n")
    for name in ("unreadable", "negative"):
        (predictions / f"res_{name}.txt").write_text("")
    scored = run_dbtk("eval", "--pred", str(predictions), "--data", str(root), "--json")
    assert scored.returncode == 0 and "Traceback" not in scored.stderr, scored.stderr
    result = json.loads(scored.stdout)
    eval_skipped = {p["where"]: p["reason"] for p in result["problems"] if p["reason"] in set(result["skipped_images"])}

    assert clean_skipped == train_skipped == eval_skipped == {"unreadable.jpg": "no_valid_polygons"}
    # and each says why in the same words, from the counts that made the decision
    why = "none of its 2 label lines could be read"
    assert [u for u in report["unusable_images"] if why in json.dumps(u)], report["unusable_images"]
    assert [p for p in result["problems"] if p["reason"] == "no_valid_polygons" and p["detail"] == why], result["problems"]
    assert result["images"] == 2  # ok.jpg and the negative page are scored
