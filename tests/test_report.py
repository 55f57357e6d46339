"""``dbtk eval --report DIR``: the HTML report, its box_thresh sweep, and scores equal to a run without it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.data_fixtures import jpeg_bytes, text_image, write_icdar
from tests.web_fixtures import blob_checkpoint, labelled_split


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return blob_checkpoint(tmp_path_factory.mktemp("report") / "tiny.safetensors")


def eval_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    from dbtk.cli import main

    main(["eval", *args, "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    result.pop("seconds"), result.pop("images_per_second")
    return result


def test_report_scores_equal_a_plain_run_and_its_sweep_equals_reruns(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = labelled_split(tmp_path / "split", checkpoint)
    plain = eval_json(capsys, str(checkpoint), "--data", str(split))
    report = tmp_path / "report"
    with_report = eval_json(capsys, str(checkpoint), "--data", str(split), "--report", str(report))
    assert with_report == plain  # box_thresh 0 + filtering by score is exactly box_thresh 0.5
    assert plain["matched"] and plain["precision"] < 1 and plain["recall"] < 1  # matches, misses and false detections

    data = json.loads((report / "report.json").read_text())
    curve = {point["box_thresh"]: point for point in data["curve"]}
    assert list(curve) == [round(0.05 * i, 2) for i in range(20)]
    assert curve[0.5]["hmean"] == plain["hmean"]
    lower = eval_json(capsys, str(checkpoint), "--data", str(split), "--set", "postprocess.box_thresh=0.3")
    assert {k: curve[0.3][k] for k in ("precision", "recall", "matched", "det_care")} == {
        k: lower[k] for k in ("precision", "recall", "matched", "det_care")}

    page = (report / "index.html").read_text()
    rows = re.findall(r'<tr><td><a href="#(images/[^"]+)">([^<]+)</a></td>', page)
    assert [name for _, name in rows] == [f"page{i}.jpg" for i in range(4)]
    for overlay, _ in rows:
        assert (report / overlay).is_file() and f'src="{overlay}"' in page
    assert f"{plain['hmean']:.4f}" in page and "<svg" in page and page.count("<polyline") == 3
    assert not re.search(r'(src|href)="(https?:)?//', page)  # self-contained: nothing fetched from elsewhere


def test_overlays_use_distinct_colours(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    split = labelled_split(tmp_path / "split", checkpoint, images=1)
    eval_json(capsys, str(checkpoint), "--data", str(split), "--report", str(tmp_path / "report"))
    overlay = cv2.imread(str(next((tmp_path / "report" / "images").iterdir())))
    hue, saturation, _ = cv2.split(cv2.cvtColor(overlay, cv2.COLOR_BGR2HSV).astype(int))
    coloured = saturation > 60  # thin anti-aliased lines blend with the page: tell them apart by hue
    hues = {"matched detection (blue)": (95, 125), "false detection (red)": (0, 6), "missed ground truth (orange)": (10, 25)}
    for what, (low, high) in hues.items():
        assert (coloured & (hue >= low) & (hue <= high)).sum() > 20, f"no {what} in the overlay"


def test_report_needs_a_checkpoint(tmp_path: Path) -> None:
    from tests.conftest import run_dbtk

    split = write_icdar(tmp_path / "split", {"a.jpg": (jpeg_bytes(text_image()), "8,10,40,10,40,20,8,20,x\n")})
    proc = run_dbtk("eval", "--pred", str(tmp_path), "--data", str(split), "--report", str(tmp_path / "r"))
    assert proc.returncode == 2 and "--report needs a CHECKPOINT" in proc.stderr and "Traceback" not in proc.stderr
