"""Data pipeline: polygon repair, readers, images, targets, augmentation, dataset, cache and clean-data."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbtk import recipe as recipes
from dbtk.data import images as img
from dbtk.data.augment import AugmentConfig, random_affine, transform_points
from dbtk.data.dataset import DetectionDataset, collate, usable_labels
from dbtk.data.formats import ICDAR2015, ReceiptJSON, parse_icdar_line
from dbtk.data.polygons import Reason, repair, short_side, signed_area
from dbtk.data.synthetic import SyntheticText
from dbtk.data.targets import make_targets, shrink_distance
from tests.conftest import run_dbtk
from tests.data_fixtures import GOOD_LINE, broken_dataset, jpeg_bytes, text_image, write_icdar

DOCS_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "docs-dev"

SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10]]


# ---------------------------------------------------------------------------------------------- polygons
def test_valid_polygon_is_untouched() -> None:
    fixed = repair(SQUARE, 20, 20)
    assert fixed.reasons == () and not fixed.ignore
    assert np.array_equal(fixed.points, np.array(SQUARE, np.float32))


@pytest.mark.parametrize(
    ("points", "reasons", "dropped"),
    [
        ([[0, 0], [math.nan, 0], [10, 10], [0, 10]], (Reason.NON_FINITE,), True),
        ([[0, 0], [10, 0], [0, math.inf]], (Reason.NON_FINITE,), True),
        ([[0, 0], [10, 0]], (Reason.TOO_FEW_POINTS,), True),
        ([[0, 0], [0, 0], [10, 0], [10, 10], [0, 10]], (Reason.DUPLICATE_POINTS,), False),
        ([[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], (Reason.DUPLICATE_POINTS,), False),  # closed ring
        ([[3, 3], [3, 3], [3, 3], [3, 3]], (Reason.DUPLICATE_POINTS, Reason.TOO_FEW_POINTS), True),
        ([[0, 0], [5, 0], [10, 0], [15, 0]], (Reason.ZERO_AREA,), True),
        ([[0, 0], [10, 10], [10, 0], [0, 10]], (Reason.SELF_INTERSECTION,), False),
        ([[0, 0], [0, 10], [10, 10], [10, 0]], (Reason.ORIENTATION,), False),
        ([[15, 5], [25, 5], [25, 15], [15, 15]], (Reason.OUT_OF_BOUNDS,), False),
        ([[30, 30], [40, 30], [40, 40], [30, 40]], (Reason.OUTSIDE_IMAGE,), True),
    ],
    ids=["nan", "inf", "two-points", "duplicate", "closed-ring", "one-point", "collinear", "bowtie", "ccw", "clip", "outside"],
)
def test_repair_reasons(points, reasons, dropped) -> None:
    fixed = repair(points, 20, 20)
    assert fixed.reasons == reasons
    assert fixed.dropped == dropped
    if not dropped:
        assert signed_area(fixed.points) > 0  # always clockwise in image coordinates
        assert fixed.points.min() >= 0 and fixed.points.max() <= 20


def test_bowtie_keeps_largest_part() -> None:
    fixed = repair([[0, 0], [20, 10], [20, 0], [0, 20]], 40, 40)  # unequal lobes
    assert Reason.SELF_INTERSECTION in fixed.reasons
    assert abs(signed_area(fixed.points)) > 50


def test_tiny_becomes_dont_care_and_ignore_is_kept() -> None:
    tiny = repair([[0, 0], [30, 0], [30, 2], [0, 2]], 40, 40, min_size=3)
    assert tiny.reasons == (Reason.TINY,) and tiny.ignore and not tiny.dropped
    assert repair(SQUARE, 20, 20, ignore=True, min_size=30).ignore
    assert short_side(np.array(SQUARE, np.float32)) == pytest.approx(10)


# ---------------------------------------------------------------------------------------------- readers
def test_icdar_line_with_bom_and_commas() -> None:
    problems: list = []
    annotation = parse_icdar_line("\ufeff1,2,3,4,5,6,7,8,Total: 1,234.50", "f", 1, problems)
    assert annotation.text == "Total: 1,234.50" and not annotation.ignore
    assert annotation.points.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert parse_icdar_line("1,2,3,4,5,6,7,8,###", "f", 2, problems).ignore
    assert parse_icdar_line("1,2,3", "f", 3, problems) is None
    assert problems[0].where() == "f:3" and problems[0].reason == "bad_line"


def test_icdar_reader_bom_missing_gt_and_latin1(tmp_path: Path) -> None:
    image = jpeg_bytes(text_image())
    root = write_icdar(tmp_path, {"a.jpg": (image, "\ufeff" + GOOD_LINE + "\n"), "b.jpg": (image, None)})
    (root / "images" / "c.jpg").write_bytes(image)
    (root / "gts" / "gt_c.txt").write_bytes("8,10,40,10,40,20,8,20,caf\xe9\n".encode("latin-1"))
    reader = ICDAR2015(recipes.Split(str(root)))
    assert [r.name for r in reader.records] == ["a.jpg", "c.jpg"]
    assert reader.records[0].annotations[0].text == "hello, world"
    assert reader.records[1].annotations[0].text == "café"
    assert sorted(p.reason for p in reader.problems) == ["encoding", "missing_gt"]


def test_receipt_json_reader(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "r1.jpg").write_bytes(jpeg_bytes(text_image()))
    document = {
        "images": {
            "r1.jpg": {"words": {
                "0001": {"points": [[8, 10], [40, 10], [40, 20], [25, 22], [8, 20]], "orientation": "Horizontal"},
                "0002": {"points": "garbage"},
                "0003": {"points": [[1, 1], [5, 1], [5, 5]], "transcription": "###"},
            }},
            "missing.jpg": {"words": {}},
        }
    }
    (tmp_path / "train.json").write_text(json.dumps(document))
    reader = ReceiptJSON(recipes.Split(str(tmp_path / "images"), str(tmp_path / "train.json")))
    assert len(reader) == 1
    words = reader.records[0].annotations
    assert len(words) == 2 and words[0].points.shape == (5, 2) and words[1].ignore
    assert sorted(p.reason for p in reader.problems) == ["bad_points", "missing_image"]


def test_synthetic_is_deterministic_and_splits_differ() -> None:
    train = SyntheticText(recipes.Split("train"), count=3, seed=1)
    a, b = train.load(2), SyntheticText(recipes.Split("train"), count=3, seed=1).load(2)
    assert np.array_equal(a.decoded.image, b.decoded.image)
    val = SyntheticText(recipes.Split("val"), count=3, seed=1).load(2)
    assert not np.array_equal(a.decoded.image, val.decoded.image)
    assert len(a.annotations) >= 1
    for annotation in a.annotations:  # boxes lie on dark-or-light text, inside the image
        assert not repair(annotation.points, 320, 320).dropped


# ---------------------------------------------------------------------------------------------- images
def test_exif_rotation_moves_pixels_and_polygons_together(tmp_path: Path) -> None:
    stored = text_image(64, 48, boxes=((8, 10, 40, 20),))
    for orientation in range(1, 9):
        root = write_icdar(tmp_path / str(orientation), {"r.jpg": (jpeg_bytes(stored, orientation), GOOD_LINE + "\n")})
        reader = ICDAR2015(recipes.Split(str(root)))
        image, polygons, _, repairs, _, _ = usable_labels(reader.load(0), reader.exif)
        assert image.shape[:2] == ((64, 48) if orientation >= 5 else (48, 64))
        import cv2

        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(polygons[0]).astype(np.int32)], 1)
        dark = image.mean(axis=2) < 100
        assert dark[mask == 1].mean() > 0.8, orientation  # the box still covers the "text"
        assert dark[mask == 0].mean() < 0.05, orientation
        assert not repairs


def test_truncated_corrupt_and_empty_images() -> None:
    data = jpeg_bytes(text_image())
    with pytest.raises(img.ImageError) as info:
        img.decode_image(data[: len(data) // 2])
    assert info.value.reason == "truncated"
    with pytest.raises(img.ImageError) as info:
        img.decode_image(b"GIF89a-not-really" * 5)
    assert info.value.reason == "corrupt"
    with pytest.raises(img.ImageError) as info:
        img.decode_image(b"")
    assert info.value.reason == "empty"


def test_decompression_bomb_refused_from_header() -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    assert img.header_size(png) == (20000, 20000)
    with pytest.raises(img.ImageError) as info:
        img.decode_image(png)
    assert info.value.reason == "too_large"
    assert img.header_size(jpeg_bytes(text_image(64, 48))) == (64, 48)


def test_grayscale_alpha_and_16bit_become_rgb8() -> None:
    import cv2

    for array in (np.full((8, 9), 7, np.uint8), np.full((8, 9, 4), 7, np.uint8), np.full((8, 9, 3), 7 * 256, np.uint16)):
        ok, buffer = cv2.imencode(".png", array)
        decoded = img.decode_image(buffer.tobytes())
        assert decoded.image.shape == (8, 9, 3) and decoded.image.dtype == np.uint8
        assert decoded.image.max() == 7


# ---------------------------------------------------------------------------------------------- targets
def test_targets_of_a_rectangle() -> None:
    box = np.array([[10, 10], [50, 10], [50, 30], [10, 30]], np.float64)
    maps = make_targets([box], [False], 40, 60, shrink_ratio=0.4)
    distance = shrink_distance(box, 0.4)  # A(1 − r²)/L = 800·0.84/120 = 5.6
    assert distance == pytest.approx(5.6)
    rows = np.nonzero(maps["shrink_map"].any(axis=1))[0]
    assert rows.min() == round(10 + 5.6) and rows.max() == round(30 - 5.6)
    assert maps["thresh_map"][20, 10] == pytest.approx(0.7)  # on the edge: thresh_max
    assert maps["thresh_map"][0, 0] == pytest.approx(0.3)  # far away: thresh_min
    assert maps["thresh_map"][20, 13] == pytest.approx(0.3 + 0.4 * (1 - 3 / 5.6), abs=1e-5)
    assert maps["thresh_mask"][20, 5] == 1 and maps["thresh_mask"][20, 3] == 0
    assert maps["shrink_mask"].all()


def test_ignored_polygons_are_masked_out() -> None:
    box = np.array([[10, 10], [50, 10], [50, 30], [10, 30]], np.float64)
    maps = make_targets([box], [True], 40, 60)
    assert not maps["shrink_map"].any() and maps["shrink_mask"][20, 30] == 0 and not maps["thresh_mask"].any()


def test_thin_text_keeps_a_kernel() -> None:
    line = np.array([[5, 10], [60, 10], [60, 12.5], [5, 12.5]], np.float64)  # 2.5 px high
    assert make_targets([line], [False], 30, 70)["shrink_map"].sum() > 0


polygon_strategy = st.builds(
    lambda cx, cy, w, h, angle: (cx, cy, w, h, angle),
    st.floats(20, 280), st.floats(20, 280), st.floats(4, 120), st.floats(3, 40), st.floats(-90, 90),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boxes=st.lists(polygon_strategy, min_size=1, max_size=6),
    crop=st.booleans(),
    scale=st.tuples(st.floats(0.3, 1.0), st.floats(1.0, 2.5)),
    rotate=st.floats(0, 45),
    seed=st.integers(0, 2**31),
)
def test_augment_keeps_polygons_inside_and_kernels_nonempty(boxes, crop, scale, rotate, seed) -> None:
    import cv2

    polygons = [cv2.boxPoints(((cx, cy), (w, h), a)).astype(np.float64) for cx, cy, w, h, a in boxes]
    polygons = [repair(p, 300, 300).points for p in polygons]
    polygons = [p.astype(np.float64) for p in polygons if p is not None]
    config = AugmentConfig(size=128, crop=crop, random=True, scale_min=scale[0], scale_max=scale[1], rotate=rotate)
    rng = np.random.default_rng(seed)
    matrix = random_affine(rng, 300, 300, polygons, [False] * len(polygons), config)
    for points in polygons:
        fixed = repair(transform_points(points, matrix), 128, 128, min_size=3)
        if fixed.dropped:
            continue
        assert fixed.points.min() >= 0 and fixed.points.max() <= 128
        if not fixed.ignore:
            maps = make_targets([fixed.points], [False], 128, 128)
            assert maps["shrink_map"].sum() > 0, fixed.points


# ---------------------------------------------------------------------------------------------- dataset
def _data(**overrides) -> recipes.Data:
    text = "[data]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in overrides.items())
    return recipes.loads(text).data


def test_dataset_never_yields_none_and_counts_skips(tmp_path: Path) -> None:
    root, _ = broken_dataset(tmp_path / "broken")
    reader = ICDAR2015(recipes.Split(str(root)))
    dataset = DetectionDataset(reader, _data(image_size=64), train=True, seed=0)
    samples = [dataset[i] for i in range(2 * len(dataset))]
    assert all(s is not None and s["image"].shape == (64, 64, 3) for s in samples)
    skipped = collate(samples)["skipped"]
    assert skipped["corrupt"] >= 2 and skipped["truncated"] >= 2 and skipped["no_valid_polygons"] >= 2
    batch = collate(samples[:4])
    assert batch["images"].shape == (4, 3, 64, 64) and str(batch["images"].dtype) == "torch.uint8"
    assert batch["shrink_map"].shape == (4, 64, 64)


def test_dataset_is_reproducible_per_epoch_and_index() -> None:
    reader = SyntheticText(recipes.Split("train"), count=4, width=128, height=128)
    dataset = DetectionDataset(reader, _data(image_size=128), train=True, seed=3)
    again = DetectionDataset(reader, _data(image_size=128), train=True, seed=3)
    assert np.array_equal(dataset[5]["image"], again[5]["image"])  # epoch 1, sample 1
    assert not np.array_equal(dataset[1]["image"], dataset[5]["image"])  # same sample, another epoch


def test_cache_key_covers_target_parameters_and_file(tmp_path: Path) -> None:
    root = write_icdar(tmp_path / "d", {"a.jpg": (jpeg_bytes(text_image()), GOOD_LINE + "\n")})
    reader = ICDAR2015(recipes.Split(str(root)))
    cache = str(tmp_path / "cache")
    first = DetectionDataset(reader, _data(image_size=64, augment=False, cache=cache, shrink_ratio=0.4), train=True)[0]
    assert len(list(Path(cache).glob("*.raw"))) == 1
    hit = DetectionDataset(reader, _data(image_size=64, augment=False, cache=cache, shrink_ratio=0.4), train=True)[0]
    assert np.array_equal(first["shrink_map"], hit["shrink_map"])
    other = DetectionDataset(reader, _data(image_size=64, augment=False, cache=cache, shrink_ratio=0.8), train=True)[0]
    assert other["shrink_map"].sum() > first["shrink_map"].sum()  # new ratio, new maps: never the old entry
    assert len(list(Path(cache).glob("*.raw"))) == 2
    import os
    import time

    image_path = root / "images" / "a.jpg"
    image_path.write_bytes(jpeg_bytes(text_image(boxes=((8, 10, 40, 20), (8, 30, 40, 40)))))
    os.utime(image_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    ICDAR2015(recipes.Split(str(root)))
    DetectionDataset(ICDAR2015(recipes.Split(str(root))), _data(image_size=64, augment=False, cache=cache), train=True)[0]
    assert len(list(Path(cache).glob("*.raw"))) == 3  # changed file, new entry


# ---------------------------------------------------------------------------------------------- clean-data
def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_clean_data_counts_problems_and_never_touches_source(tmp_path: Path) -> None:
    root, expected = broken_dataset(tmp_path / "broken")
    before = _tree_digest(root)
    report_path = tmp_path / "report.json"
    check = run_dbtk("clean-data", str(root), "--check", "--report", str(report_path), "--workers", "2")
    assert check.returncode == 1, check.stderr
    assert "problems found" in check.stderr and "Traceback" not in check.stderr
    report = json.loads(report_path.read_text())
    assert report["problems"] == expected
    assert report["images"] == 11 and report["usable_images"] == 8  # truncated, corrupt, flat (no valid polygon)
    assert {d["reason"] for d in report["dropped_polygons"]} == {"non_finite", "outside_image", "zero_area", "too_few_points"}
    assert "nan.jpg" in {d["image"] for d in report["dropped_polygons"]}

    out = tmp_path / "fixed"
    wrote = run_dbtk("clean-data", str(root), "--out", str(out), "--workers", "1")
    assert wrote.returncode == 0, wrote.stderr
    assert _tree_digest(root) == before
    recheck = run_dbtk("clean-data", str(out), "--check")
    assert recheck.returncode == 0, recheck.stdout + recheck.stderr
    rotated = ICDAR2015(recipes.Split(str(out)))
    names = [r.name for r in rotated.records]
    assert "rotated.jpg" in names and "corrupt.jpg" not in names
    assert img.read_image(out / "images" / "rotated.jpg").image.shape[:2] == (64, 48)


def test_clean_data_refuses_to_write_into_source(tmp_path: Path) -> None:
    root, _ = broken_dataset(tmp_path / "broken")
    proc = run_dbtk("clean-data", str(root), "--out", str(root))
    assert proc.returncode == 2 and "never modifies its input" in proc.stderr
    proc = run_dbtk("clean-data", str(root))
    assert proc.returncode == 2 and "exactly one of --out DST and --check" in proc.stderr


@pytest.mark.skipif(not DOCS_DEV.is_dir(), reason="shared docs-dev data not present")
def test_clean_data_on_docs_dev(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    proc = run_dbtk("clean-data", str(DOCS_DEV / "val"), "--check", "--report", str(report_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    assert (report["images"], report["polygons_kept"], report["problem_total"]) == (40, 3580, 0)
