"""``dbtk export``: safetensors bundles and ONNX files that detect what their checkpoint detects, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dbtk import recipe as recipes
from tests.conftest import run_dbtk
from tests.data_fixtures import jpeg_bytes, text_image

BOXES = ((10, 12, 120, 26), (20, 50, 90, 62), (130, 80, 180, 100))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [np.ascontiguousarray(text_image(w, h, BOXES, seed=w)[..., ::-1]) for w, h in ((200, 120), (150, 190), (260, 100))]


@pytest.fixture(scope="module")
def checkpoint(images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random model reshaped so its map has blobs: smooth upsampling, logits spread over ~10 units
    (a random init's map is nearly constant) and a quarter of the first image's pixels above the threshold."""
    import torch

    from dbtk.io.checkpoint import save_weights
    from dbtk.infer.detector import resize_for_inference
    from dbtk.models.builder import build_model

    recipe = recipes.loads(
        'name = "tiny"\n[model.encoder]\nname = "timm"\narch = "resnet18"\npretrained = "/nowhere/resnet18.safetensors"\n'
        "[model.decoder]\nchannels = 32\n[eval]\nlong_side = 192\n[postprocess]\nbox_thresh = 0.0\nthresh = 0.3\n"
    )
    torch.manual_seed(0)
    model = build_model(recipes.loads(recipes.dumps(recipe).replace('"/nowhere/resnet18.safetensors"', "false")).model).eval()
    sample = torch.from_numpy(resize_for_inference(images[0], 192).tensor).permute(2, 0, 1)[None]
    branch = model.head.prob_branch
    last = branch[-1]
    with torch.no_grad():
        for up in (branch[3], branch[6]):  # constant 2×2 kernels: no checkerboard specks in the map
            up.weight.copy_(up.weight.mean(dim=(2, 3), keepdim=True).expand_as(up.weight))
        last.bias.zero_()
        logits = model(sample, return_all=False)["logits"]
        last.weight.mul_(10 / float(logits.max() - logits.min()))
        logits = model(sample, return_all=False)["logits"]
        last.bias.fill_(float(torch.logit(torch.tensor(0.3)) - torch.quantile(logits.flatten(), 0.75)))
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_weights(path, model, recipe)
    return path


@pytest.fixture(scope="module")
def onnx_file(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dbtk.infer.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(checkpoint, out)
    return out


def _assert_same_detections(a: list, b: list) -> None:
    assert [len(d) for d in a] == [len(d) for d in b]
    assert sum(len(d) for d in a) > 0
    for x, y in zip(a, b, strict=True):
        for p, q in zip(x.polygons, y.polygons, strict=True):
            np.testing.assert_array_equal(p, q)
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-4)


def test_bundle_round_trip(checkpoint: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    from safetensors import safe_open

    from dbtk.infer.detector import Detector
    from dbtk.infer.export import export_bundle

    bundle = tmp_path / "bundle.safetensors"
    export_bundle(checkpoint, bundle)
    with safe_open(str(bundle), framework="pt") as reader:
        metadata = reader.metadata()
        assert not any(key.startswith("train_state") for key in reader.keys())
    assert metadata["kind"] == "bundle" and json.loads(metadata["postprocess"])["thresh"] == 0.3
    assert json.loads(metadata["normalisation"])["mean"][0] == pytest.approx(123.675)
    embedded = recipes.loads(metadata["recipe"])
    assert embedded.model.encoder.params["pretrained"] is False  # the local ImageNet file is not needed to load it
    _assert_same_detections(Detector.load(checkpoint, "cpu")(images), Detector.load(bundle, "cpu")(images))


def test_onnx_round_trip_matches_torch(checkpoint: Path, onnx_file: Path, images: list[np.ndarray]) -> None:
    from dbtk.infer.detector import Detector
    from dbtk.infer.export import compare

    torch_detector, onnx_detector = Detector.load(checkpoint, "cpu"), Detector.load(onnx_file, "cpu")
    assert onnx_detector.recipe == recipes.loads(recipes.dumps(onnx_detector.recipe))
    assert onnx_detector.postprocess.thresh == 0.3 and onnx_detector.long_side == 192
    _assert_same_detections(torch_detector(images), onnx_detector(images))
    _assert_same_detections(torch_detector(images, batch_size=3), onnx_detector(images, batch_size=3))
    results = compare(torch_detector, onnx_detector, list(zip("abc", images, strict=True)))
    assert all(r.max_abs_diff <= 1e-4 and r.boxes_identical for r in results)


@pytest.mark.parametrize("shape", [(1, 64, 96), (2, 128, 128), (3, 224, 32)])
def test_onnx_dynamic_shapes(checkpoint: Path, onnx_file: Path, shape: tuple[int, int, int]) -> None:
    from dbtk.infer.detector import Detector

    batch = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = Detector.load(checkpoint, "cpu").runtime(batch)
    got = Detector.load(onnx_file, "cpu").runtime(batch)
    assert got.shape == expected.shape == shape
    assert np.abs(got - expected).max() <= 1e-4


def test_static_onnx_pads_and_chunks(checkpoint: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    from dbtk.infer.detector import Detector
    from dbtk.infer.export import compare, export_onnx

    static = tmp_path / "static.onnx"
    export_onnx(checkpoint, static, dynamic=False, size=224, batch=2)
    detector = Detector.load(static, "cpu")
    assert detector.runtime.input_size == (224, 224) and detector.long_side == 224
    results = detector(images)  # 3 images through a batch-2 graph
    assert len(results) == 3
    comparisons = compare(Detector.load(checkpoint, "cpu"), detector, list(zip("abc", images, strict=True)))
    assert all(c.input_size == (224, 224) and c.max_abs_diff <= 1e-4 and c.boxes_identical for c in comparisons)


def test_compare_catches_a_drifting_export(checkpoint: Path, images: list[np.ndarray]) -> None:
    from dbtk.infer.detector import Detector
    from dbtk.infer.export import compare

    reference = Detector.load(checkpoint, "cpu")

    class Drifting:
        input_size = None

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return reference.runtime(batch) * 0.9

    results = compare(reference, Detector(Drifting(), reference.recipe), [("a", images[0])])
    assert results[0].max_abs_diff > 1e-3 and not results[0].boxes_identical


def test_onnx_inference_never_imports_torch(onnx_file: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    page = tmp_path / "page.jpg"
    page.write_bytes(jpeg_bytes(np.ascontiguousarray(images[0][..., ::-1])))
    blocker = textwrap.dedent(
        """
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith(("torch.", "torchvision", "timm")):
                    raise ImportError(f"{name} imported on the ONNX path")
        sys.meta_path.insert(0, NoTorch())
        """
    )
    script = blocker + textwrap.dedent(
        f"""
        from dbtk.infer.detector import Detector
        detector = Detector.load({str(onnx_file)!r}, "cpu")
        print(len(detector({str(page)!r})[0]))
        from dbtk.cli import main
        main(["predict", {str(onnx_file)!r}, {str(page)!r}, "--out", {str(tmp_path / "out")!r}, "--device", "cpu"])
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.splitlines()[0]) > 0
    assert json.loads((tmp_path / "out" / "page.json").read_text())["detections"]


def test_missing_onnx_extra_is_named(monkeypatch: pytest.MonkeyPatch, onnx_file: Path) -> None:
    from dbtk.errors import DbtkError
    from dbtk.infer.detector import Detector

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DbtkError, match="onnxruntime is not installed") as info:
        Detector.load(onnx_file)
    assert "dbtk[onnx]" in (info.value.hint or "")


def test_cli_export_check_and_errors(checkpoint: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    page = tmp_path / "page.jpg"
    page.write_bytes(jpeg_bytes(np.ascontiguousarray(images[1][..., ::-1])))
    result = run_dbtk("export", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--check", "--images", str(page))
    assert result.returncode == 0, result.stderr
    assert "identical boxes" in result.stdout and "page.jpg" in result.stdout
    assert result.stderr.startswith("• loading")

    bad = run_dbtk("export", str(checkpoint), "--out", str(tmp_path / "m.bin"))
    assert bad.returncode == 2 and "cannot tell the format" in bad.stderr and "Traceback" not in bad.stderr
    no_images = run_dbtk("export", str(checkpoint), "--out", str(tmp_path / "b.safetensors"), "--check")
    assert no_images.returncode == 2 and "--images" in no_images.stderr  # the tiny recipe has no data.val


def test_hostile_onnx_files_are_refused(tmp_path: Path) -> None:
    from dbtk.errors import DbtkError
    from dbtk.infer.detector import Detector

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(DbtkError, match="not a loadable ONNX model"):
        Detector.load(garbage, "cpu")
    with pytest.raises(DbtkError, match="ONNX file not found"):
        Detector.load(tmp_path / "missing.onnx", "cpu")
