"""One label path: clean-data, training and evaluation agree, by reason, on one damaged folder.

The folder (tests/data_fixtures.broken_dataset) holds out-of-bounds, NaN, degenerate, self-intersecting and
mis-ordered polygons, a BOM, a truncated and a corrupt image, a missing label file and an EXIF-rotated photo.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from dbtk import recipe as recipes
from dbtk.data.dataset import DetectionDataset, SampleError
from dbtk.data.formats import open_split
from dbtk.data.images import ImageError
from dbtk.data.polygons import Reason
from tests.conftest import run_dbtk
from tests.data_fixtures import broken_dataset

POLYGON_REASONS = {r.value for r in Reason}


def _training_view(root: Path) -> tuple[dict[str, str], Counter]:
    """The images the training dataset skips (name -> reason) and the polygon repairs it counts."""
    reader = open_split(str(root))
    data = recipes.structure({"data": {"train": str(root), "cache": "off"}}, source="test").data
    dataset = DetectionDataset(reader, data, train=True, seed=0)
    skipped, repairs = {p.where().split("/")[-1]: p.reason for p in reader.problems if p.reason == "missing_gt"}, Counter()
    for index in range(len(dataset)):
        try:
            found = dataset.page(index).repairs
        except (ImageError, SampleError) as exc:
            skipped[reader.name(index)] = exc.reason
            repairs.update(getattr(exc, "repairs", ()))
            continue
        repairs.update(found)
    return skipped, repairs


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, _ = broken_dataset(tmp_path_factory.mktemp("damaged") / "set")
    return root


def test_clean_data_training_and_eval_agree_by_reason(damaged: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    check = run_dbtk("clean-data", str(damaged), "--check", "--report", str(report_path), "--workers", "1")
    assert check.returncode == 1, check.stderr
    report = json.loads(report_path.read_text())
    clean_skipped = {u["image"]: u["reason"] for u in report["unusable_images"]}
    clean_skipped.update({e.split(":")[0].split("/")[-1]: "missing_gt" for e in report["examples"].get("missing_gt", [])})
    clean_repairs = Counter({k: v for k, v in report["problems"].items() if k in POLYGON_REASONS})

    train_skipped, train_repairs = _training_view(damaged)

    predictions = tmp_path / "pred"  # the ground truth itself as predictions, hostile lines included
    shutil.copytree(damaged / "gts", predictions)
    scored = run_dbtk("eval", "--pred", str(predictions), "--data", str(damaged), "--json")
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    eval_skipped = {p["where"]: p["reason"] for p in result["problems"] if p["reason"] in set(result["skipped_images"])}
    eval_skipped.update({p["where"].split("/")[-1]: "missing_gt" for p in result["problems"] if p["reason"] == "missing_gt"})
    eval_repairs = Counter(result["repaired_polygons"])

    expected_skips = {"flat.jpg": "no_valid_polygons", "truncated.jpg": "truncated", "corrupt.jpg": "corrupt", "nogt.jpg": "missing_gt"}
    assert clean_skipped == train_skipped == eval_skipped == expected_skips
    assert clean_repairs == train_repairs == eval_repairs
    assert eval_repairs[Reason.NON_FINITE.value] == 1 and eval_repairs[Reason.SELF_INTERSECTION.value] == 1
    assert "Traceback" not in scored.stderr
    assert result["images"] == 12 - len(expected_skips)  # every other image is scored


def test_eval_never_lets_non_finite_geometry_reach_shapely(damaged: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "pred"
    predictions.mkdir()
    hostile = "nan,1,5,1,5,9,1,9,0.9\ninf,0,1,1,2,2,3,3,0.8\n1,1,1,1,1,1,1,1\n0,0,10,10,10,0,0,10,0.5\n"
    for image in (damaged / "images").iterdir():
        (predictions / f"res_{image.stem}.txt").write_text(hostile)
    scored = run_dbtk("eval", "--pred", str(predictions), "--data", str(damaged), "--json")
    assert scored.returncode == 0, scored.stderr
    assert "Traceback" not in scored.stderr and "GEOS" not in scored.stderr
