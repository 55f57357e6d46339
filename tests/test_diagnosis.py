"""'My model finds nothing': an evaluation measures the text heights the network saw against those it trained on
and, when they are far apart or the score is near zero, says in one line which setting to change, with numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dbtk import recipe as recipes
from dbtk.data.polygons import short_side
from dbtk.data.synthetic import SyntheticText
from dbtk.infer.detector import Detector
from dbtk.infer.evaluate import diagnose, evaluate_detector, text_heights
from dbtk.infer.metrics import Summary


class Blank:
    """A network that finds no text anywhere."""

    input_size = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros(batch.shape[:3], np.float32)


def detector(**tables: dict) -> Detector:
    return Detector(Blank(), recipes.structure(tables, source="test"))


def lines(heights: list[float], side: float, scale: float) -> np.ndarray:
    """Diagnosis input rows: native height, network px per image px, image long side."""
    return np.column_stack([heights, np.full(len(heights), scale), np.full(len(heights), side)])


def summary(hmean: float, matched: int = 0, gt: int = 100, det: int = 0) -> Summary:
    return Summary(hmean, hmean, hmean, matched, gt, det, 10)


#: Documents: crops at native scale, random scale 0.7-1.4 (the docs recipe).
DOCS = {"data": {"crop": 512, "scale_min": 0.7, "scale_max": 1.4}}


def arc(inner: float, outer: float, start: float, stop: float, count: int = 40) -> np.ndarray:
    angles = np.linspace(start, stop, count)
    top = np.column_stack([outer * np.cos(angles), outer * np.sin(angles)])
    bottom = np.column_stack([inner * np.cos(angles[::-1]), inner * np.sin(angles[::-1])])
    return np.concatenate([top, bottom]) + 200


def test_text_height_is_the_short_side_of_a_box_and_the_thickness_of_a_curved_line() -> None:
    import cv2

    box = cv2.boxPoints(((50, 40), (80, 12), 30))
    band = arc(60, 72, 0.3, 2.6)  # a 12 px thick line along 2.3 rad of a circle
    heights = text_heights([box, band])
    assert heights[0] == pytest.approx(12, abs=1e-3)
    assert heights[1] == pytest.approx(12, rel=0.02)
    assert short_side(band.astype(np.float32)) > 40  # the box of a curved line says nothing about its height


def test_text_far_smaller_than_trained_names_the_long_side_that_fixes_it() -> None:
    found = diagnose(detector(**DOCS, eval={"long_side": 256}), summary(0.01), lines([11.0] * 50, 1000, 256 / 1000))
    assert found is not None and found.setting == "eval.long_side"
    assert (found.text_height, found.trained_on) == (2.8, (7.7, 15.4))
    assert found.message == (
        "the text is 2.8 px high (median of 50 lines) after the resize to eval.long_side = 256, the model trained on "
        "7.7–15.4 px (512 px crops at native scale × 0.7–1.4): set eval.long_side = 992")


def test_small_text_on_large_scans_names_tiling() -> None:
    found = diagnose(detector(**DOCS, eval={"long_side": 1024}), summary(0.5, 50, 100, 60), lines([11.0] * 50, 6000, 1024 / 6000))
    assert found is not None and found.setting == "eval.tile"
    assert found.message.endswith("tile instead, at eval.tile_scale = 1, where it is 11.0 px: eval.tile = 1024 (dbtk predict --tile 1024)")
    assert "1.9 px high" in found.message


def test_tiling_a_model_trained_on_resized_pages_names_the_tile_scale() -> None:
    photos = {"data": {"image_size": 640, "scale_min": 0.5, "scale_max": 1.5}, "eval": {"tile": 1024}}
    found = diagnose(detector(**photos), summary(0.3, 30, 100, 40), lines([40.0] * 20, 2000, 1.0))
    assert found is not None and found.setting == "eval.tile_scale"
    assert "40.0 px high (median of 20 lines) at eval.tile_scale = 1 (eval.tile = 1024), the model trained on 6.4–19.2 px (pages resized to data.image_size = 640 × 0.5–1.5)" in found.message
    assert found.message.endswith("set eval.tile_scale = 0.28, where it is 11.2 px")


def test_near_zero_at_the_right_scale_names_the_thresholds_or_the_box_size() -> None:
    right = lines([11.0] * 50, 1000, 1.0)
    few = diagnose(detector(**DOCS), summary(0.0, 0, 100, 3), right)
    assert few is not None and few.setting == "postprocess.box_thresh"
    assert few.message == ("hmean 0.000 with 3 boxes for 100 lines, at a text height the model trained on (11.0 px; 7.7–15.4): "
                           "lower postprocess.box_thresh (0.4) or postprocess.thresh (0.3)")
    misplaced = diagnose(detector(**DOCS), summary(0.02, 2, 100, 90), right)
    assert misplaced is not None and misplaced.setting == "postprocess.unclip_ratio"
    assert "90 boxes for 100 lines, of which 2 overlap a line by IoU > 0.5" in misplaced.message
    assert diagnose(detector(**DOCS), summary(0.8, 80, 100, 100), right) is None


def test_evaluation_carries_the_diagnosis_into_its_json() -> None:
    split = recipes.Split("val")
    reader = SyntheticText(split, count=2, val_count=3, width=128, height=128, min_height=8, max_height=20)
    found = evaluate_detector(detector(data={"image_size": 128}, eval={"long_side": 128}), reader)
    assert found.summary.hmean == 0 and found.diagnosis is not None
    record = json.loads(json.dumps(found.as_dict()))["diagnosis"]
    assert record["setting"] == "postprocess.box_thresh" and record["message"].startswith("hmean 0.000 with 0 boxes")


def test_dbtk_eval_prints_the_diagnosis_after_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    from dbtk.cli.eval import _print_summary

    split = recipes.Split("val")
    reader = SyntheticText(split, count=2, val_count=3, width=128, height=128, min_height=8, max_height=20)
    found = evaluate_detector(detector(data={"image_size": 128}, eval={"long_side": 128}), reader)
    _print_summary(found, worst=0)
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: hmean 0.000 with 0 boxes" in err and "postprocess.box_thresh" in err
