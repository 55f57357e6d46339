"""Regressions from an outside tester's round: each was a traceback, a modified input or a silent wrong answer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import run_dbtk
from tests.data_fixtures import GOOD_LINE, jpeg_bytes, text_image, write_icdar

pytestmark = pytest.mark.reliability


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path).encode() + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()


@pytest.fixture
def split(tmp_path: Path) -> Path:
    image = jpeg_bytes(text_image())
    return write_icdar(tmp_path / "val", {"a.jpg": (image, GOOD_LINE + "\n"), "b.jpg": (image, GOOD_LINE + "\n")})


def one_error(result) -> None:  # noqa: ANN001
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("value", ["1e39", "1e308", "4e38"])
def test_huge_prediction_coordinates_never_reach_geos(split: Path, tmp_path: Path, value: str) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in ("a", "b"):
        (pred / f"res_{name}.txt").write_text(f"{value},15,80,15,80,45,20,45\n8,10,40,10,40,20,8,20\n")
    result = run_dbtk("eval", "--pred", str(pred), "--data", str(split), "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["clean-data", "{split}", "--check", "--report", "{split}/gts/gt_a.txt"],
        ["clean-data", "{split}", "--out", "{split}/gts/clean"],
        ["clean-data", "{split}/images", "--annotations", "{split}/gts", "--out", "{split}"],
        ["convert", "{split}", "--from", "icdar2015", "--to", "coco", "--out", "{tmp}/x", "--report", "{split}/r.json"],
        ["eval", "--pred", "{split}/gts", "--data", "{split}", "--vis", "{split}/images"],
    ],
)
def test_outputs_never_land_in_inputs(split: Path, tmp_path: Path, argv: list[str]) -> None:
    before = digest(split)
    one_error(run_dbtk(*(a.format(split=split, tmp=tmp_path) for a in argv)))
    assert digest(split) == before


def test_eval_refuses_when_no_image_can_be_scored(tmp_path: Path) -> None:
    image = jpeg_bytes(text_image())
    bad = write_icdar(tmp_path / "bad", {"a.jpg": (image, "nan,1,2,3,4,5,6,7,x\n"), "b.jpg": (b"", GOOD_LINE + "\n")})
    result = run_dbtk("eval", "--pred", str(bad / "gts"), "--data", str(bad))
    one_error(result)
    assert "nothing scored" in result.stderr


def test_a_logger_file_outside_the_run_folder_is_refused(tmp_path: Path) -> None:
    from tests.test_train import TINY

    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.replace("PRECISION", "fp32"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    result = run_dbtk("train", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu",
                      "--set", 'loggers=[{name="jsonl", filename="../victim.txt"}]')
    one_error(result)
    assert victim.read_text() == "precious\n"
