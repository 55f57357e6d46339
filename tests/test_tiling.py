"""Tiled inference (``eval.tile``): pages at native scale in overlapping tiles, probability maps stitched before
post-processing, through the one inference path (``Detector.detect_stream``) — lines across tile borders come out
whole and once, tiles go through the network in batches, and the page map equals a one-pass map."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dbtk import recipe as recipes
from dbtk.infer.detector import Detector, tile_windows
from dbtk.infer.postprocess import Detections, boxes_from_map
from tests.conftest import run_dbtk
from tests.data_fixtures import jpeg_bytes


class Dark:
    """A per-pixel 'network' (probability = darkness): any tiling of a page must give the page's own map."""

    def __init__(self, input_size: tuple[int, int] | None = None, blind: int = 0, border: float = 0.0) -> None:
        self.input_size = input_size
        self.blind = blind  # px at each tile border answered `border`, like a network without context there
        self.border = border  # 0: a line cut by the border fades; 1: the cut itself looks like text
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        prob = 1.0 - batch[..., 0].astype(np.float32) / 255.0
        if self.blind:
            b = self.border
            prob[:, : self.blind], prob[:, -self.blind :], prob[:, :, : self.blind], prob[:, :, -self.blind :] = b, b, b, b
        return prob


def page(height: int, width: int, bars: list[tuple[int, int, int, int]]) -> np.ndarray:
    image = np.full((height, width, 3), 235, np.uint8)
    for x0, y0, x1, y1 in bars:
        image[y0:y1, x0:x1] = 20
    return image


#: Text bars crossing the tile borders of a 128 px grid (and one inside a tile), 20+ px from the page's edges.
BARS = [(20, 40, 680, 52), (100, 120, 300, 140), (250, 200, 560, 214), (30, 250, 90, 262)]


def recipe(tile: int, overlap: int, batch_size: int = 4, scale: float = 1.0) -> recipes.Recipe:
    return recipes.structure({"eval": {"tile": tile, "tile_overlap": overlap, "batch_size": batch_size, "tile_scale": scale},
                              "postprocess": {"thresh": 0.5, "box_thresh": 0.5}}, source="test")


def one_pass(image: np.ndarray, config: recipes.Recipe) -> Detections:
    """What a per-pixel network gives on the whole page at native scale: the reference for any tiling."""
    prob = 1.0 - image[..., 0].astype(np.float32) / 255.0
    return boxes_from_map(prob, config.postprocess, (1.0, 1.0), (image.shape[1], image.shape[0]))


def assert_same(found: Detections, expected: Detections) -> None:
    assert len(found) == len(expected) > 0
    for a, b in zip(found.polygons, expected.polygons, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(found.scores, expected.scores, atol=1e-5)


@pytest.mark.parametrize(("width", "height", "tile", "overlap"), [(700, 300, 128, 32), (1000, 1000, 256, 0), (128, 96, 128, 64), (60, 900, 256, 100), (4097, 33, 1024, 512)])
def test_tile_windows_cover_the_page_inside_it_with_the_overlap(width: int, height: int, tile: int, overlap: int) -> None:
    windows = tile_windows(width, height, tile, overlap)
    covered = np.zeros((height, width), np.int32)
    for x0, y0, x1, y1 in windows:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert x1 - x0 == min(tile, width) and y1 - y0 == min(tile, height)  # full tiles unless the page is smaller
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    xs, ys = sorted({w[0] for w in windows}), sorted({w[1] for w in windows})
    for starts in (xs, ys):
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap px
    assert len(windows) == len(xs) * len(ys)


@pytest.mark.parametrize(("height", "width", "tile"), [(300, 700, 128), (333, 717, 256), (100, 150, 256)])
def test_stitched_page_map_gives_the_one_pass_boxes(height: int, width: int, tile: int) -> None:
    bars = [b for b in BARS if b[2] < width - 20 and b[3] < height - 20] or [(20, 20, width - 20, 32)]
    image = page(height, width, bars)
    config = recipe(tile, 32)
    found = Detector(Dark(), config).detect_arrays([image])[0]
    assert_same(found, one_pass(image, config))
    assert len(found) == len(bars)  # every bar once: none cut at a tile border, none doubled in an overlap


def test_a_large_page_may_hold_max_candidates_regions_per_tile() -> None:
    bars = [(20 + 90 * (i % 7), 20 + 40 * (i // 7), 90 + 90 * (i % 7), 30 + 40 * (i // 7)) for i in range(42)]
    image = page(280, 700, bars)
    config = recipes.structure({"eval": {"tile": 256, "tile_overlap": 32}, "postprocess": {"thresh": 0.5, "box_thresh": 0.5, "max_candidates": 10}})
    assert len(tile_windows(700, 280, 256, 32)) * 10 >= len(bars)
    assert len(Detector(Dark(), config).detect_arrays([image])[0]) == len(bars)  # not 10: the page's lines are no noise


def test_overlap_hides_the_tile_borders_the_network_cannot_see_across() -> None:
    image = page(300, 700, BARS)
    reference = one_pass(image, recipe(128, 32))
    assert_same(Detector(Dark(blind=12), recipe(128, 32)).detect_arrays([image])[0], reference)
    # Without overlap the blind borders cut the long bar (and lose pieces): the overlap is what makes it whole.
    cut = Detector(Dark(blind=12), recipe(128, 0)).detect_arrays([image])[0]
    assert len(cut) != len(reference)


@pytest.mark.parametrize("border", [0.0, 1.0])
@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(300, 700, 128, 32), (333, 717, 256, 64), (500, 260, 128, 64)])
def test_every_pixel_comes_from_a_tile_it_lies_well_inside(border: float, height: int, width: int, tile: int, overlap: int) -> None:
    """Whatever a network answers within overlap / 2 of a tile's border — too low or falsely high — never reaches
    the stitched map, except at the page's own edges: each pixel is taken from the tile it lies deepest in."""
    image = page(height, width, BARS)
    blind = overlap // 2
    config = recipe(tile, overlap)
    stitched, _ = Detector(Dark(blind=blind, border=border), config).stitched_map(image, 4)
    truth, _ = Detector(Dark(), config).stitched_map(image, 4)
    inner = (slice(blind, height - blind), slice(blind, width - blind))
    np.testing.assert_array_equal(stitched[inner], truth[inner])
    np.testing.assert_allclose(truth, 1.0 - image[..., 0] / 255.0, atol=1e-6)  # and the clean tiles give the page's map


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_tiles_go_through_the_network_in_batches_never_the_whole_page(batch_size: int) -> None:
    image = page(300, 700, BARS)
    network = Dark()
    keys = [key for key, _, _ in Detector(network, recipe(128, 32, batch_size)).detect_stream([("a", image), ("b", image)])]
    assert keys == ["a", "b"]
    tiles = len(tile_windows(700, 300, 128, 32))
    per_page = [min(batch_size, tiles - i) for i in range(0, tiles, batch_size)]
    assert [shape[0] for shape in network.shapes] == per_page * 2  # ⌈tiles / batch⌉ calls per page
    assert {shape[1:] for shape in network.shapes} == {(128, 128, 3)}


def test_static_export_tiles_fit_its_fixed_input() -> None:
    image = page(300, 700, BARS)
    network = Dark(input_size=(96, 96))
    detector = Detector(network, recipe(256, 128))
    assert (detector.tile, detector.tile_overlap) == (96, 48)
    assert_same(detector.detect_arrays([image])[0], one_pass(image, recipe(256, 128)))
    assert {shape[1:] for shape in network.shapes} == {(96, 96, 3)}


def test_tile_scale_scales_the_page_before_tiling_and_the_boxes_back() -> None:
    image = page(300, 700, BARS)
    network = Dark()
    found = Detector(network, recipe(128, 32, scale=0.5)).detect_arrays([image])[0]
    assert sum(shape[0] for shape in network.shapes) == len(tile_windows(350, 150, 128, 32))  # tiles of the half-size page
    reference = one_pass(image, recipe(128, 32))
    assert len(found) == len(reference) == len(BARS)
    for a, b in zip(found.polygons, reference.polygons, strict=True):
        np.testing.assert_allclose(a, b, atol=2.5)  # in original pixels, to the half-size map's resolution


def test_input_scale_is_the_tile_scale_when_tiling() -> None:
    assert Detector(Dark(), recipe(0, 128)).input_scale(2048, 1000) == pytest.approx(1024 / 2048)
    assert Detector(Dark(), recipe(512, 128)).input_scale(2048, 1000) == 1.0
    assert Detector(Dark(), recipe(512, 128, scale=1.5)).input_scale(2048, 1000) == 1.5


def test_tile_keys_are_checked() -> None:
    with pytest.raises(recipes.RecipeError, match=r"eval.tile in r.toml: must be a positive multiple of 32"):
        recipes.loads("[eval]\ntile = 1000\n", "r.toml")
    with pytest.raises(recipes.RecipeError, match=r"eval.tile_overlap in r.toml: must be at most half of tile \(256\), got 200"):
        recipes.loads("[eval]\ntile = 256\ntile_overlap = 200\n", "r.toml")


# ---------------------------------------------------------------------------------------------- predict --tile
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from dbtk.io.checkpoint import save_weights
    from dbtk.models.builder import build_model

    recipe = recipes.loads("[model.decoder]\nchannels = 16\n[eval]\nlong_side = 128\n[postprocess]\nbox_thresh = 0.0\nthresh = 0.2\n")
    torch.manual_seed(0)
    model = build_model(recipe.model)
    with torch.no_grad():
        model.head.prob_branch[-1].bias.fill_(-0.5)  # some pixels above thresh: detections to write
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_weights(path, model, recipe)
    return path


def test_predict_tile_runs_at_native_scale_and_refuses_bad_sides(checkpoint: Path, tmp_path: Path) -> None:
    image = tmp_path / "scan.jpg"
    image.write_bytes(jpeg_bytes(page(200, 300, [(20, 40, 280, 52)])))
    out = tmp_path / "pred"
    proc = run_dbtk("predict", str(checkpoint), str(image), "--out", str(out), "--tile", "128", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "tiles of 128 px overlap by 64 px (the recipe's eval.tile_overlap 128 is more than half a tile)" in proc.stderr
    detections = json.loads((out / "scan.json").read_text())["detections"]
    assert detections and all(math.isfinite(v) for d in detections for point in d["points"] for v in point)

    bad = run_dbtk("predict", str(checkpoint), str(image), "--out", str(out), "--tile", "100")
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[0] == "error: invalid value for '--tile': 100 is not a multiple of 32 (0 turns tiling off)"
    assert "Traceback" not in bad.stderr
    small = run_dbtk("predict", str(checkpoint), str(image), "--out", str(out), "--tile", "64")
    assert small.returncode == 2 and small.stderr.splitlines()[0].startswith("error: invalid value for '--tile': 64 is below 128")
