"""Inference and evaluation: metric (with parity against text-det-metric), post-processing, Detector, CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dbtk import recipe as recipes
from dbtk.data.formats import ICDAR2015
from dbtk.infer.metrics import evaluate_image, summarize
from dbtk.infer.postprocess import boxes_from_map, order_boxes
from tests.conftest import run_dbtk
from tests.data_fixtures import jpeg_bytes, text_image, write_icdar

DOCS_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "docs-dev" / "val"


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


# ---------------------------------------------------------------------------------------------- metric
def test_one_to_one_matching() -> None:
    gt = [box(0, 0, 10, 10)]
    duplicate = [box(0, 0, 10, 10), box(0, 0, 10, 9)]  # both IoU > 0.5 with the one ground truth
    score = evaluate_image(gt, [False], duplicate)
    assert (score.matched, score.gt_care, score.det_care) == (1, 1, 2)
    assert score.pairs == [(0, 0)] and score.false_positives == [1]


def test_matching_is_greedy_in_gt_then_det_order() -> None:
    """ICDAR2015 walks ground truths, then detections, in index order and takes the first free pair above the
    threshold; it neither prefers the highest IoU nor maximises the number of matches, and dbtk must not either
    (published numbers are comparable only under the same protocol).

    IoUs: gt0–det0 8/12, gt1–det0 8/12, gt0–det1 9/10, gt1–det1 5/14 (below 0.5). Greedy: gt0 takes det0, the
    first detection above the threshold, which leaves gt1 nothing. Max-IoU-first (gt0–det1 at 0.9, then
    gt1–det0) and Hungarian matching would both give [(0, 1), (1, 0)]."""
    gts = [box(0, 0, 10, 10), box(4, 0, 14, 10)]
    dets = [box(2, 0, 12, 10), box(0, 0, 9, 10)]
    score = evaluate_image(gts, [False, False], dets)
    assert score.pairs == [(0, 0)]
    assert (score.matched, score.missed, score.false_positives) == (1, [1], [1])


def test_iou_threshold_is_strict() -> None:
    gt = [box(0, 0, 10, 10)]
    assert evaluate_image(gt, [False], [box(0, 0, 10, 5)]).matched == 0  # IoU exactly 0.5
    assert evaluate_image(gt, [False], [box(0, 0, 10, 5.1)]).matched == 1


def test_dont_care_regions() -> None:
    gts = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    ignore = [False, True]
    inside_dont_care = box(21, 0, 29, 10)  # 100% inside the ### region: ignored
    half_outside = box(25, 0, 40, 10)  # one third inside: counted, and unmatched
    score = evaluate_image(gts, ignore, [box(0, 0, 10, 10), inside_dont_care, half_outside])
    assert (score.matched, score.gt_care, score.det_care) == (1, 1, 2)
    assert score.false_positives == [2]
    summary = summarize([score, evaluate_image([box(0, 0, 5, 5)], [False], [])])
    assert (summary.matched, summary.gt_care, summary.det_care) == (1, 2, 2)
    assert summary.precision == 0.5 and summary.recall == 0.5 and summary.hmean == 0.5


def test_invalid_polygons_are_left_out_on_both_sides() -> None:
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=np.float64)
    score = evaluate_image([box(0, 0, 10, 10), bowtie], [False, False], [bowtie, box(0, 0, 10, 10)])
    assert (score.matched, score.gt_care, score.det_care) == (1, 1, 1)
    assert score.pairs == [(0, 1)]


def simulated_detections(shape, gts, ignore, rng) -> list[np.ndarray]:  # noqa: ANN001
    """What a half-trained detector gives: blurred kernels, some lines faint, noise specks and blobs."""
    import cv2

    from dbtk.data.targets import make_targets

    h, w = shape
    keep = [g for g, i in zip(gts, ignore, strict=True) if rng.random() < 0.85]
    prob = make_targets(keep, [False] * len(keep), h, w)["shrink_map"] * rng.uniform(0.5, 1.0)
    prob = cv2.GaussianBlur(prob, (5, 5), 1.5) + (rng.random((h, w)) > 0.995) * 0.8
    for x, y in rng.uniform(0, min(h, w) - 40, (5, 2)).astype(int):
        prob[y : y + 12, x : x + 40] = 0.7
    return boxes_from_map(np.clip(prob, 0, 1), recipes.Postprocess()).polygons


def _reference_counts(gts, ignore, dets):  # noqa: ANN001, ANN202
    reference = pytest.importorskip("text_det_metric").TextDetMetric()
    result = reference.evaluate_image(
        [{"points": g.tolist(), "ignore": i} for g, i in zip(gts, ignore, strict=True)],
        [{"points": d.tolist(), "ignore": False} for d in dets],
    )
    return result["detMatched"], result["gtCare"], result["detCare"]


def _prf(matched: int, gt: int, det: int) -> tuple[float, float, float]:
    p, r = matched / det, matched / gt
    return p, r, 2 * p * r / (p + r)


@pytest.mark.skipif(not DOCS_VAL.is_dir(), reason="shared docs-dev data not present")
@pytest.mark.parametrize("mode", ["ground-truth", "jittered", "detector"])
def test_metric_parity_with_text_det_metric(mode: str) -> None:
    pytest.importorskip("text_det_metric")
    rng = np.random.default_rng(7)
    reader = ICDAR2015(recipes.Split(str(DOCS_VAL)))
    ours, theirs = [], [0, 0, 0]
    for record in reader.records[:12]:
        gts = [a.points for a in record.annotations]
        ignore = [a.ignore for a in record.annotations]
        if mode == "ground-truth":
            dets = [g.copy() for g, i in zip(gts, ignore, strict=True) if not i]
        elif mode == "jittered":
            dets = [g + rng.normal(0, 2.0, g.shape) for g in gts]
        else:  # a detector's output: post-processing of a noisy probability map made from the labels
            dets = simulated_detections(reader.load(reader.records.index(record)).decoded.image.shape[:2], gts, ignore, rng)
        ours.append(evaluate_image(gts, ignore, dets))
        for k, v in enumerate(_reference_counts(gts, ignore, dets)):
            theirs[k] += v
    summary = summarize(ours)
    assert (summary.matched, summary.gt_care, summary.det_care) == tuple(theirs)
    for a, b in zip((summary.precision, summary.recall, summary.hmean), _prf(*theirs), strict=True):
        assert abs(a - b) <= 1e-9


def test_documented_difference_duplicates() -> None:
    """text-det-metric counts every pair above the IoU threshold; ICDAR2015 (and dbtk) match one-to-one."""
    gts, dets = [box(0, 0, 10, 10)], [box(0, 0, 10, 10), box(0, 0, 10, 9.5)]
    assert _reference_counts(gts, [False], dets) == (2, 1, 2)  # recall 2.0 there
    score = evaluate_image(gts, [False], dets)
    assert (score.matched, score.gt_care, score.det_care) == (1, 1, 2)


# ---------------------------------------------------------------------------------------------- post-processing
def _kernel_map(boxes: list[tuple[int, int, int, int]], size: tuple[int, int] = (120, 200)) -> np.ndarray:
    prob = np.zeros(size, np.float32)
    for x0, y0, x1, y1 in boxes:
        prob[y0:y1, x0:x1] = 0.9
    return prob


def test_boxes_from_map_recovers_unclipped_boxes() -> None:
    config = recipes.Postprocess(unclip_ratio=1.5)
    detections = boxes_from_map(_kernel_map([(20, 20, 120, 30), (30, 60, 90, 80)]), config)
    assert len(detections) == 2
    got = sorted(detections.polygons, key=lambda p: p[0, 1])
    # kernel 100×10 pixels → contour box 99×9; d = 99·9·1.5 / (2·108) = 6.19; box grows by 2d per side
    w, h = 99 + 2 * 6.1875, 9 + 2 * 6.1875
    assert np.allclose(got[0][2] - got[0][0], [w, h], atol=0.01)
    assert np.allclose(got[0].mean(axis=0), [69.5, 24.5], atol=0.01)
    assert all(s == pytest.approx(0.9) for s in detections.scores)


def test_box_thresh_min_size_and_scaling() -> None:
    prob = _kernel_map([(20, 20, 120, 30)])
    prob[60:62, 30:33] = 0.95  # a 3×2 speck: below min_size
    prob[80:100, 150:190] = 0.35  # confident enough to binarise, not to keep
    config = recipes.Postprocess(box_thresh=0.5)
    detections = boxes_from_map(prob, config, scale=(2.0, 3.0), clip_to=(400, 360))
    assert len(detections) == 1
    assert detections.polygons[0][:, 0].max() <= 400 and detections.polygons[0][:, 1].mean() == pytest.approx(24.5 * 3, abs=0.05)


def test_noisy_map_is_capped_and_still_finds_text() -> None:
    """An early-training map: ~30k specks, a few hundred word-sized blobs that would each make a box, one text
    line. ``max_candidates`` bounds the work and the output, and the regions kept are the largest, so the line
    survives a cap that the blobs alone exceed (the reference's "first N contours" would keep specks)."""
    import cv2

    rng = np.random.default_rng(0)
    prob = (rng.random((1000, 1000)) > 0.97).astype(np.float32) * 0.9  # ~30k specks
    blobs = [(x, y) for y in range(20, 980, 40) if not 480 <= y <= 530 for x in range(20, 980, 40)]
    for x, y in blobs:
        prob[y : y + 6, x : x + 14] = 0.9
    prob[500:515, 100:700] = 0.95
    cap = 50
    regions = cv2.connectedComponents(np.greater(prob, 0.3).view(np.uint8), connectivity=8)[0] - 1
    assert regions > 100 * cap and len(blobs) > 10 * cap  # the cap, not the map, must be what limits the output

    capped = boxes_from_map(prob, recipes.Postprocess(max_candidates=cap))
    assert 1 <= len(capped) <= cap
    longest = max(capped.polygons, key=lambda p: np.ptp(p[:, 0]))
    assert np.ptp(longest[:, 0]) > 600
    raised = boxes_from_map(prob, recipes.Postprocess(max_candidates=10 * len(blobs)))
    assert len(raised) >= len(blobs) + 1  # every blob and the line once the cap no longer binds


def test_polygon_mode_and_exact_scores() -> None:
    prob = _kernel_map([(20, 20, 120, 30)])
    polygon = boxes_from_map(prob, recipes.Postprocess(polygon=True, score_mode="exact"))
    assert len(polygon) == 1 and len(polygon.polygons[0]) >= 4
    assert polygon.scores[0] == pytest.approx(0.9)


def test_order_boxes_is_clockwise_from_top_left() -> None:
    counter_clockwise = np.array([[10, 10], [10, 0], [0, 0], [0, 10]], np.float32)
    clockwise_from_bottom = np.array([[0, 10], [0, 0], [10, 0], [10, 10]], np.float32)
    expected = [[0, 0], [10, 0], [10, 10], [0, 10]]
    ordered = order_boxes(np.stack([counter_clockwise, clockwise_from_bottom]))
    assert ordered[0].tolist() == expected and ordered[1].tolist() == expected


# ---------------------------------------------------------------------------------------------- detector and CLIs
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from dbtk.io.checkpoint import save_weights
    from dbtk.models.builder import build_model

    recipe = recipes.loads('[model.decoder]\nchannels = 32\n[eval]\nlong_side = 128\n[postprocess]\nbox_thresh = 0.0\nthresh = 0.2\n')
    torch.manual_seed(0)
    model = build_model(recipe.model)
    with torch.no_grad():
        model.head.prob_branch[-1].bias.fill_(-0.5)  # some pixels above thresh: detections to write
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_weights(path, model, recipe)
    return path


def test_detector_builds_once_and_writes_no_files(checkpoint: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tempfile

    import dbtk.models.builder as builder
    from dbtk.infer.detector import Detector

    builds = []
    real_build = builder.build_model
    monkeypatch.setattr(builder, "build_model", lambda *a, **k: builds.append(1) or real_build(*a, **k))

    def no_temp_files(*_a, **_k):
        raise AssertionError("inference must not create temporary files")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, no_temp_files)
    monkeypatch.chdir(tmp_path)
    detector = Detector.from_checkpoint(checkpoint, device="cpu")
    image = text_image(160, 96)
    from PIL import Image

    path = tmp_path / "page.jpg"
    path.write_bytes(jpeg_bytes(image))
    results = [detector(image[..., ::-1].copy()), detector(str(path)), detector(Image.fromarray(image)), detector([image] * 3, batch_size=2)]
    assert len(builds) == 1
    assert [len(r) for r in results] == [1, 1, 1, 3]
    assert list(tmp_path.iterdir()) == [path]  # nothing written beside the input


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    import pickle

    from dbtk.io.checkpoint import read_weights
    from dbtk.errors import DbtkError

    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(DbtkError, match="not a readable safetensors file"):
        read_weights(fake)
    with pytest.raises(DbtkError, match="checkpoint not found"):
        read_weights(tmp_path / "missing.safetensors")


def _tiny_split(root: Path) -> Path:
    items = {f"p{i}.jpg": (jpeg_bytes(text_image(160, 96, seed=i)), "8,10,40,10,40,20,8,20,x\n") for i in range(3)}
    return write_icdar(root, items)


def test_predict_and_eval_cli(checkpoint: Path, tmp_path: Path) -> None:
    split = _tiny_split(tmp_path / "split")
    out = tmp_path / "pred"
    proc = run_dbtk("predict", str(checkpoint), str(split / "images"), "--out", str(out), "--format", "icdar", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["res_p0.txt", "res_p1.txt", "res_p2.txt"]
    proc = run_dbtk("predict", str(checkpoint), str(split / "images" / "p0.jpg"), "--out", str(out), "--vis", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "p0.json").read_text())
    assert data["width"] == 160 and all(len(d["points"]) == 4 for d in data["detections"])
    assert (out / "p0_vis.jpg").is_file()

    scored = run_dbtk("eval", "--pred", str(out), "--data", str(split), "--json")
    assert scored.returncode == 0, scored.stderr
    from_files = json.loads(scored.stdout)
    direct = run_dbtk("eval", str(checkpoint), "--data", str(split), "--json", "--device", "cpu")
    assert direct.returncode == 0, direct.stderr
    from_model = json.loads(direct.stdout)
    assert from_files["images"] == from_model["images"] == 3
    assert from_files["gt_care"] == from_model["gt_care"] == 3
    assert abs(from_files["hmean"] - from_model["hmean"]) < 0.2  # txt files hold rounded coordinates

    table = run_dbtk("eval", str(checkpoint), "--data", str(split), "--device", "cpu", "--vis", str(tmp_path / "vis"), "--worst", "2")
    assert table.returncode == 0, table.stderr
    assert "hmean" in table.stdout and len(list((tmp_path / "vis").iterdir())) == 2
    drawn = run_dbtk("eval", str(checkpoint), "--data", str(split), "--device", "cpu", "--json", "--vis", str(tmp_path / "vis2"))
    assert drawn.returncode == 0, drawn.stderr
    assert json.loads(drawn.stdout)["images"] == 3  # stdout holds the JSON alone; the overlays line is on stderr
    assert "overlays of the" in drawn.stderr


def test_eval_refuses_what_it_cannot_honour_before_evaluating(checkpoint: Path, tmp_path: Path) -> None:
    """--set keys outside eval/postprocess (the model's training settings are the checkpoint's), and a --vis or
    --report folder that cannot be created: one error line, exit 2, before any image is evaluated."""
    split = _tiny_split(tmp_path / "split")
    (tmp_path / "afile").write_text("x")
    for args, said in (
        (["--set", "data.image_size=64"], "--set data.image_size=64: eval changes eval.* and postprocess.* keys only"),
        (["--set", "train.lr=1"], "eval changes eval.* and postprocess.* keys only"),
        (["--vis", str(tmp_path / "afile" / "sub")], "cannot create the folder"),
        (["--report", str(tmp_path / "afile" / "sub")], "cannot create the folder"),
    ):
        proc = run_dbtk("eval", str(checkpoint), "--data", str(split), "--device", "cpu", *args)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert "evaluating" not in proc.stderr and "loading" not in proc.stderr.lower(), proc.stderr
    ok = run_dbtk("eval", str(checkpoint), "--data", str(split), "--device", "cpu", "--json",
                  "--set", "eval.long_side=96", "--set", "postprocess.box_thresh=0.5")
    assert ok.returncode == 0, ok.stderr


def test_eval_usage_errors(tmp_path: Path) -> None:
    split = _tiny_split(tmp_path / "split")
    proc = run_dbtk("eval", "--data", str(split))
    assert proc.returncode == 2 and "give a CHECKPOINT or --pred DIR" in proc.stderr
