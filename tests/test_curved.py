"""Curved text end to end: the synthetic reader draws lines along arcs with polygon labels, the DB targets follow
the curve, ``postprocess.polygon`` returns polygons along it, and the metric scores them by polygon IoU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dbtk import recipe as recipes
from dbtk.data.polygons import repair
from dbtk.data.synthetic import CURVE_POINTS, SyntheticText
from dbtk.data.targets import make_targets
from dbtk.errors import DbtkError
from dbtk.infer.metrics import evaluate_image, summarize
from dbtk.infer.postprocess import boxes_from_map
from tests.conftest import REPO


def reader(curved: float, count: int = 12) -> SyntheticText:
    return SyntheticText(recipes.Split("train"), count=count, width=128, height=128, max_lines=6, min_height=8, max_height=20, curved=curved)


def band(inner: float, outer: float, start: float, stop: float, centre: tuple[float, float] = (64, 140)) -> np.ndarray:
    """A curved line: 2 × 12 points along an arch of the circle about ``centre`` (image y points down)."""
    angles = np.linspace(start, stop, 12)
    top = np.column_stack([outer * np.cos(angles), -outer * np.sin(angles)])
    bottom = np.column_stack([inner * np.cos(angles[::-1]), -inner * np.sin(angles[::-1])])
    return np.concatenate([top, bottom]) + centre


def test_curved_fraction_of_lines_get_polygons_along_the_arc() -> None:
    counts = {}
    for curved in (0.0, 0.5, 1.0):
        points = [len(a.points) for i in range(12) for a in reader(curved).load(i).annotations]
        counts[curved] = (points.count(4), points.count(2 * CURVE_POINTS), len(points))
    assert counts[0.0][0] == counts[0.0][2] > 0  # straight: boxes only
    assert counts[1.0][1] == counts[1.0][2] > 0  # all curved
    assert 0.25 < counts[0.5][1] / counts[0.5][2] < 0.75
    for i in range(12):
        for annotation in reader(1.0).load(i).annotations:  # valid, clockwise, inside the page: nothing to repair
            fixed = repair(annotation.points, 128, 128)
            assert not fixed.dropped and fixed.reasons == ()


def test_curved_ink_lies_inside_its_polygon_the_right_way_up() -> None:
    import cv2

    rendered = reader(1.0)
    image = np.zeros((128, 128, 3), np.uint8)  # black page: the drawn line is bright
    patch = np.zeros((14, 90), np.uint8)
    patch[:7] = 255  # ink in the top half of the line only: it must land in the top half of the label
    polygon = rendered._draw_curved(np.random.default_rng(3), image, np.zeros((128, 128), bool), patch)
    assert polygon is not None and len(polygon) == 2 * CURVE_POINTS
    top, bottom = polygon[:CURVE_POINTS], polygon[CURVE_POINTS:][::-1]  # same points along the line, both edges
    upper = np.concatenate([top, ((top + bottom) / 2)[::-1]])
    ink = image.max(axis=2) > 64
    inside = np.zeros((128, 128), np.uint8)
    cv2.fillPoly(inside, [np.round(upper).astype(np.int32)], 1)
    near = cv2.dilate(inside, np.ones((3, 3), np.uint8)).view(bool)
    assert not (ink & ~near).any()  # no ink outside the upper half (one pixel of antialiasing)
    assert (ink & inside.view(bool)).sum() > 0.85 * inside.sum()  # and the upper half is all ink
    assert np.ptp(top[:, 1]) > 4  # a curve, not a straight edge


def test_curved_parameter_is_checked_and_part_of_the_identity() -> None:
    with pytest.raises(DbtkError, match="curved must be a fraction of the lines, 0-1, got 1.5"):
        reader(1.5)
    assert reader(0.0).identity(0) != reader(0.5).identity(0)


def test_targets_follow_the_curve() -> None:
    import cv2

    line = band(40, 52, 0.4, 2.7)
    maps = make_targets([line], [False], 128, 128)
    kernel = maps["shrink_map"] > 0
    inside = np.zeros((128, 128), np.uint8)
    cv2.fillPoly(inside, [np.round(line).astype(np.int32)], 1)
    assert kernel.any() and not (kernel & ~inside.view(bool)).any()
    count, _ = cv2.connectedComponents(kernel.view(np.uint8))
    assert count == 2  # one kernel, along the whole arc
    ys, xs = np.nonzero(kernel)
    assert np.ptp(xs) > 70 and np.ptp(ys) > 15


@pytest.mark.parametrize("score_mode", ["fast", "exact"])
def test_polygon_mode_returns_curved_polygons_scored_inside_their_contour(score_mode: str) -> None:
    import cv2

    lines = [band(40, 52, 0.4, 2.7), band(14, 26, 0.3, 2.8, centre=(64, 60))]
    prob = cv2.GaussianBlur(make_targets(lines, [False, False], 128, 128)["shrink_map"].astype(np.float32), (3, 3), 0)
    config = recipes.Postprocess(polygon=True, score_mode=score_mode, box_thresh=0.6)
    found = boxes_from_map(prob, config, (1.0, 1.0), (128, 128))
    assert len(found) == 2 and all(len(p) > 4 for p in found.polygons)
    assert (found.scores > 0.6).all()  # the mean inside the contour, not inside its mostly empty box
    score = evaluate_image(lines, [False, False], found.polygons)
    assert score.matched == 2
    boxes = boxes_from_map(prob, recipes.Postprocess(box_thresh=0.0), (1.0, 1.0), (128, 128))
    assert evaluate_image(lines, [False, False], boxes.polygons).matched < 2  # a box cannot cover an arch


def test_polygon_run_on_synthetic_curved_text_scores_like_perfect_maps() -> None:
    """With the network replaced by the ideal map, polygons score near 1 on curved text where boxes do not."""
    import cv2

    curved = reader(1.0, count=16)
    results = {True: [], False: []}
    for i in range(16):
        sample = curved.load(i)
        points = [a.points for a in sample.annotations]
        prob = cv2.GaussianBlur(make_targets(points, [False] * len(points), 128, 128)["shrink_map"].astype(np.float32), (3, 3), 0)
        for polygon in results:
            found = boxes_from_map(prob, recipes.Postprocess(polygon=polygon, box_thresh=0.5), (1.0, 1.0), (128, 128))
            results[polygon].append(evaluate_image(points, [False] * len(points), found.polygons))
    assert summarize(results[True]).hmean > 0.97
    assert summarize(results[False]).hmean < summarize(results[True]).hmean - 0.05


@pytest.mark.slow
def test_curved_run_reaches_the_straight_runs_hmean(tmp_path: Path) -> None:
    """recipes/curved.toml (polygons, half the lines curved) against the same run on straight text with boxes:
    within 3 hmean points, and its polygons have more than four points where the text curves."""
    from dbtk.engine.trainer import Trainer
    from dbtk.infer.detector import Detector

    curved = recipes.load(REPO / "recipes" / "curved.toml")
    straight = recipes.load(REPO / "recipes" / "curved.toml", ["data.format.curved=0", "postprocess.polygon=false"])
    best = {}
    for name, recipe in (("curved", curved), ("straight", straight)):
        trainer = Trainer(recipe, tmp_path / name)
        trainer.run()
        best[name] = trainer.state.best_hmean
    assert best["curved"] >= best["straight"] - 0.03, best
    detector = Detector.load(tmp_path / "curved" / "checkpoints" / "best.safetensors", "cpu")
    val = SyntheticText(recipes.Split("val"), **curved.data.format.params)
    on_curves = []
    for index in range(8):
        sample = val.load(index)
        found = detector(sample.decoded.image)[0]
        score = evaluate_image([a.points for a in sample.annotations], [False] * len(sample.annotations), found.polygons)
        on_curves += [len(found.polygons[d]) for g, d in score.pairs if len(sample.annotations[g].points) == 2 * CURVE_POINTS]
    assert on_curves and min(on_curves) > 4, on_curves
    print(json.dumps(best))
