"""The one batched inference path: ⌈N/B⌉ forward calls for N equal-size images, results equal to batch 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dbtk import recipe as recipes
from dbtk.infer.detector import Detector
from dbtk.infer.torch_runtime import TorchRuntime
from dbtk.models.builder import build_model


class Dark:
    """A runtime whose 'probability' is the darkness of each pixel: per image by construction, so batched and
    one-at-a-time results must be equal, and dark text bars are detected."""

    input_size = None

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape[0])
        return 1.0 - batch[..., 0].astype(np.float32) / 255.0


def images(count: int, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        image = np.full((h, w, 3), 230, np.uint8)
        image[10:30, 10 : w - 10] = rng.integers(0, 60, (20, w - 20, 3))
        out.append(image)
    return out


@pytest.fixture(scope="module")
def recipe() -> recipes.Recipe:
    return recipes.structure({"model": {"decoder": {"channels": 16}}, "eval": {"long_side": 96, "batch_size": 4},
                              "postprocess": {"thresh": 0.3, "box_thresh": 0.3}}, source="test")


def test_torch_runtime_maps_do_not_depend_on_the_batch(recipe: recipes.Recipe) -> None:
    torch.manual_seed(0)
    runtime = TorchRuntime(build_model(recipe.model))
    batch = np.stack(images(3, [(64, 96)]))
    together = runtime(batch)
    for i in range(3):
        np.testing.assert_allclose(runtime(batch[i : i + 1])[0], together[i], atol=1e-5)


def test_cpu_runtime_forwards_a_large_batch_in_pieces_of_bounded_pixels(recipe: recipes.Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU, batching large images is slower than one at a time (benchmarks/batching.py): the runtime forwards
    at most CPU_PIXELS_PER_FORWARD pixels at once, and the maps are those of the whole batch."""
    from dbtk.infer import torch_runtime

    torch.manual_seed(0)
    runtime = TorchRuntime(build_model(recipe.model))
    sizes: list[int] = []
    forward = runtime._forward
    monkeypatch.setattr(runtime, "_forward", lambda batch: sizes.append(len(batch)) or forward(batch))
    small, large = np.stack(images(5, [(64, 96)])), np.stack(images(5, [(128, 192)]))
    monkeypatch.setattr(torch_runtime, "CPU_PIXELS_PER_FORWARD", 2 * 128 * 192)
    together = runtime(small)
    assert sizes == [5]  # 5 small images fit in one forward
    sizes.clear()
    pieces = runtime(large)
    assert sizes == [2, 2, 1]
    sizes.clear()
    monkeypatch.setattr(torch_runtime, "CPU_PIXELS_PER_FORWARD", 10**9)
    np.testing.assert_allclose(pieces, runtime(large), atol=1e-5)
    assert together.shape == (5, 64, 96) and sizes == [5]


@pytest.mark.parametrize("count", [1, 4, 9])
def test_n_equal_images_take_ceil_n_over_b_calls_and_match_batch_one(count: int, recipe: recipes.Recipe) -> None:
    batch = images(count, [(64, 96)])
    counting = Dark()
    detector = Detector(counting, recipe)
    batched = detector.detect_arrays(batch)
    assert counting.calls == [min(4, count - i) for i in range(0, count, 4)]
    assert len(counting.calls) == math.ceil(count / 4)
    single = [Detector(Dark(), recipe).detect_arrays([image], batch_size=1)[0] for image in batch]
    assert len(batched) == count and sum(len(d.polygons) for d in single) > 0  # something to compare
    for a, b in zip(batched, single, strict=True):
        assert len(a.polygons) == len(b.polygons)
        for pa, pb in zip(a.polygons, b.polygons, strict=True):
            np.testing.assert_allclose(pa, pb, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_mixed_sizes_are_grouped_never_padded_and_keep_input_order(recipe: recipes.Recipe) -> None:
    batch = images(6, [(64, 96), (96, 64)])  # two resized shapes, interleaved
    counting = Dark()
    detector = Detector(counting, recipe)
    keys = [key for key, _, _ in detector.detect_stream(enumerate(batch))]
    assert keys == list(range(6))
    assert sorted(counting.calls) == [3, 3]  # one batch per shape: no image padded by another


def test_stream_reads_a_bounded_window(recipe: recipes.Recipe) -> None:
    from dbtk.infer.detector import WINDOW

    pulled = []

    def endless():  # noqa: ANN202
        for i in range(10_000):
            pulled.append(i)
            yield i, images(1, [(64, 96)])[0]

    detector = Detector(Dark(), recipe)
    first = next(iter(detector.detect_stream(endless(), batch_size=2)))
    assert first[0] == 0 and len(pulled) <= 2 * WINDOW + 1


def test_dbtk_predict_batches_its_images_and_skips_unreadable_ones(
    recipe: recipes.Recipe, tmp_path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    import json

    import cv2
    from click.testing import CliRunner

    from dbtk.cli.predict import predict

    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(images(5, [(64, 96)])):
        cv2.imwrite(str(folder / f"page{i}.png"), image)
    (folder / "broken.png").write_bytes(b"not an image")
    counting = Dark()
    monkeypatch.setattr(Detector, "load", classmethod(lambda cls, path, device="auto": Detector(counting, recipe)))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    result = CliRunner().invoke(predict, [str(model), str(folder), "--out", str(tmp_path / "out"), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert counting.calls == [2, 2, 1]  # ⌈5/2⌉ forward passes, not one per image
    written = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert written == [f"page{i}.json" for i in range(5)]
    assert all(json.loads((tmp_path / "out" / name).read_text())["detections"] for name in written)


def test_dbtk_predict_keeps_every_result_when_stems_clash(recipe: recipes.Recipe, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """``x.png`` in two folders and ``x.jpg`` beside one of them: three results, none overwritten, and it says so."""
    import cv2
    from click.testing import CliRunner

    from dbtk.cli.predict import predict

    for relative in ("a/x.png", "b/x.png", "a/x.jpg", "a/y.png"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / relative), images(1, [(64, 96)])[0])
    monkeypatch.setattr(Detector, "load", classmethod(lambda cls, path, device="auto": Detector(Dark(), recipe)))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    out = tmp_path / "out"
    result = CliRunner().invoke(predict, [str(model), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--format", "icdar"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["res_a_x.jpg.txt", "res_a_x.png.txt", "res_b_x.png.txt", "res_y.txt"]
    assert "3 images share a file stem" in " ".join(result.output.split())
    alone = tmp_path / "alone"  # x.png beside x.jpg in one folder: named by their file names
    CliRunner().invoke(predict, [str(model), str(tmp_path / "a" / "x.png"), str(tmp_path / "a" / "x.jpg"), "--out", str(alone), "--format", "icdar"])
    assert sorted(p.name for p in alone.iterdir()) == ["res_x.jpg.txt", "res_x.png.txt"]


def test_dbtk_predict_never_writes_among_its_input_images(tmp_path) -> None:  # noqa: ANN001
    import cv2

    from tests.conftest import run_dbtk

    cv2.imwrite(str(tmp_path / "x.png"), images(1, [(64, 96)])[0])
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    proc = run_dbtk("predict", str(model), str(tmp_path), "--out", str(tmp_path), "--vis")
    assert proc.returncode == 2 and "holds input images" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "x.png"]


def test_dbtk_predict_runs_a_file_named_twice_once(recipe: recipes.Recipe, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The same file by two spellings, and beside its folder (or a glob of it): one input, its own output name."""
    import os

    import cv2
    from click.testing import CliRunner

    from dbtk.cli.predict import predict

    (tmp_path / "a").mkdir()
    for name in ("x.png", "y.png"):
        cv2.imwrite(str(tmp_path / "a" / name), images(1, [(64, 96)])[0])
    monkeypatch.setattr(Detector, "load", classmethod(lambda cls, path, device="auto": Detector(Dark(), recipe)))
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    given = ["a/y.png", "./a/y.png", "a/../a/y.png", str(tmp_path / "a" / "y.png"), "a", "a/*.png"]
    result = CliRunner().invoke(predict, [str(model), *given, "--out", "out", "--format", "icdar"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir("out")) == ["res_x.txt", "res_y.txt"] and "share a file stem" not in result.output
    assert "2 images" in result.output


def test_stream_reads_ahead_a_bounded_number_of_pixels(recipe: recipes.Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large batch size of large pages holds at most READ_AHEAD_PIXELS of originals (at least one image), and the
    results do not depend on it."""
    import dbtk.infer.detector as detector_module

    pages = images(12, [(64, 96)])
    pulled: list[int] = []

    def counted():  # noqa: ANN202
        for i, page in enumerate(pages):
            pulled.append(i)
            yield i, page

    detector = Detector(Dark(), recipe)
    def plain(found):  # noqa: ANN001, ANN202
        return [p.tolist() for p in found.polygons], found.scores.tolist()

    unbounded = [plain(found) for _, _, found in detector.detect_stream(enumerate(pages), batch_size=64)]
    for budget, ahead in ((3 * 64 * 96, 3), (1, 1)):
        monkeypatch.setattr(detector_module, "READ_AHEAD_PIXELS", budget)
        pulled.clear()
        stream = detector.detect_stream(counted(), batch_size=64)
        first = next(stream)
        assert first[0] == 0 and len(pulled) == ahead  # not 12: the window stopped at the pixel budget
        rest = [plain(found) for _, _, found in stream]
        assert [plain(first[2]), *rest] == unbounded


def test_dbtk_predict_counts_a_link_to_nothing_in_a_folder(recipe: recipes.Recipe, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import cv2
    from click.testing import CliRunner

    from dbtk.cli.predict import predict

    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "x.png"), images(1, [(64, 96)])[0])
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    monkeypatch.setattr(Detector, "load", classmethod(lambda cls, path, device="auto": Detector(Dark(), recipe)))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    result = CliRunner().invoke(predict, [str(model), str(tmp_path / "a"), "--out", str(tmp_path / "out"), "--format", "icdar"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "gone.jpg" in said and "1 images" in said and "(1 unreadable)" in said
