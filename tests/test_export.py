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
    """A small random model reshaped so its map has blobs: BatchNorm statistics of the test pages themselves (as a
    trained model's come from its data: activations at the scale fp16 and INT8 rounding act on), smooth upsampling,
    logits spread over ~10 units (a random init's map is nearly constant) and a quarter of the first image's pixels
    above the threshold."""
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
    pages = [torch.from_numpy(resize_for_inference(image, 192).tensor).permute(2, 0, 1)[None] for image in images]
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the pages
    with torch.no_grad():
        model.train()
        for page in pages:
            model(page)
        model.eval()
    sample = pages[0]
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


def test_an_onnx_file_on_a_device_onnxruntime_lacks_blames_the_device_not_the_file(onnx_file: Path) -> None:
    import onnxruntime

    from dbtk.errors import DbtkError
    from dbtk.infer.onnx_runtime import OnnxRuntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(DbtkError) as refused:
        OnnxRuntime(onnx_file, device="cuda")
    assert "no CUDA provider" in refused.value.message and "not a loadable ONNX model" not in refused.value.message
    assert refused.value.hint == "pip install onnxruntime-gpu, or use --device cpu"


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

    folder = tmp_path / "mixed"  # one unreadable image among good ones: said and left out, as predict and eval do
    folder.mkdir()
    (folder / "a.jpg").write_bytes(page.read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    mixed = run_dbtk("export", str(checkpoint), "--out", str(tmp_path / "c.safetensors"), "--check", "--images", str(folder))
    assert mixed.returncode == 0, mixed.stderr
    assert "--images: skipped" in mixed.stderr and "empty.jpg" in mixed.stderr and "a.jpg" in mixed.stdout
    (folder / "a.jpg").unlink()
    none = run_dbtk("export", str(checkpoint), "--out", str(tmp_path / "d.safetensors"), "--check", "--images", str(folder))
    assert none.returncode == 2 and "images found no readable image in the given paths (1 unreadable)" in none.stderr, none.stderr
    assert "Traceback" not in none.stderr


def test_hostile_onnx_files_are_refused(tmp_path: Path) -> None:
    from dbtk.errors import DbtkError
    from dbtk.infer.detector import Detector

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(DbtkError, match="not a loadable ONNX model"):
        Detector.load(garbage, "cpu")
    with pytest.raises(DbtkError, match="ONNX file not found"):
        Detector.load(tmp_path / "missing.onnx", "cpu")


# ------------------------------------------------------------------------------------------------ fp16 and INT8
def _io_types(path: Path) -> tuple[str, str]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_inputs()[0].type, session.get_outputs()[0].type


def test_fp16_export_round_trips_within_its_tolerance(checkpoint: Path, onnx_file: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    import onnx

    from dbtk.cli.export import TOLERANCES
    from dbtk.infer.detector import Detector
    from dbtk.infer.export import compare, export_onnx

    half = tmp_path / "fp16.onnx"
    export_onnx(checkpoint, half, precision="fp16")
    assert _io_types(half) == ("tensor(uint8)", "tensor(float)")  # a service feeds and reads it as the fp32 file
    weights = [t for t in onnx.load(str(half)).graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert half.stat().st_size < 0.6 * onnx_file.stat().st_size
    detector = Detector.load(half, "cpu")
    assert detector.runtime.precision == "fp16" and Detector.load(onnx_file, "cpu").runtime.precision == "fp32"
    tolerance, box_shift, margin = TOLERANCES["fp16"]
    results = compare(Detector.load(checkpoint, "cpu"), detector, list(zip("abc", images, strict=True)), margin)
    assert sum(r.reference_boxes for r in results) > 10
    assert all(r.max_abs_diff <= tolerance and r.max_box_shift <= box_shift for r in results), results


def test_box_shift_pairs_nearest_boxes_and_lets_marginal_ones_come_and_go() -> None:
    from dbtk.infer.export import _box_shift
    from dbtk.infer.postprocess import Detections

    def box(x: float, y: float) -> np.ndarray:
        return np.array([[x, y], [x + 50, y], [x + 50, y + 10], [x, y + 10]], np.float32)

    reference = Detections([box(0, 0), box(0, 40)], np.array([0.9, 0.8], np.float32))
    reordered = Detections([box(0, 41.5), box(0.5, 0)], np.array([0.8, 0.9], np.float32))
    assert _box_shift(reference, reordered, 0.5, 0.05) == pytest.approx(1.5)
    extra = Detections([*reordered.polygons, box(100, 100)], np.array([0.8, 0.9, 0.52], np.float32))
    assert _box_shift(reference, extra, 0.5, 0.05) == pytest.approx(1.5)  # scored at the threshold: may appear
    assert _box_shift(reference, extra, 0.5, 0.0) > 100  # not marginal: a box the other model does not find
    assert _box_shift(reference, Detections([], np.zeros(0, np.float32)), 0.5, 0.05) == float("inf")


def test_box_shift_of_a_turned_near_square_box_is_how_far_its_region_moved() -> None:
    """A small blob's minimum-area rectangle may come out turned by 45 degrees from one map to the next (img_19 of
    docs-dev val under fp16): its corners are 7 px apart, its region barely moves."""
    from dbtk.infer.export import _box_shift
    from dbtk.infer.postprocess import Detections

    upright = np.array([[465, 443], [480, 443], [480, 458], [465, 458]], np.float32)
    centre = upright.mean(axis=0)
    turned = centre + (upright - centre) @ (np.array([[1, -1], [1, 1]], np.float32) / np.sqrt(2)).T
    assert np.linalg.norm(turned - upright, axis=1).max() > 5  # corner to corner: far
    score = np.array([0.9], np.float32)
    assert _box_shift(Detections([upright], score), Detections([turned], score), 0.5, 0.05) < 3.2  # 7.5·(√2−1)
    bowed = np.array([[465, 443], [472.5, 441], [480, 443], [480, 458], [465, 458]], np.float32)  # other lengths too
    assert _box_shift(Detections([upright], score), Detections([bowed], score), 0.5, 0.05) == pytest.approx(2.0)


def test_cli_fp16_check(checkpoint: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    page = tmp_path / "page.jpg"
    page.write_bytes(jpeg_bytes(np.ascontiguousarray(images[0][..., ::-1])))
    result = run_dbtk("export", str(checkpoint), "--out", str(tmp_path / "m16.onnx"), "--precision", "fp16", "--check", "--images", str(page))
    assert result.returncode == 0, result.stderr
    assert "onnx fp16 →" in result.stdout and "boxes within 3 px (scores within 0.05 of box_thresh aside)" in result.stdout


def test_int8_export_is_quantized_per_channel_with_the_head_in_float(checkpoint: Path, onnx_file: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    import onnx

    from dbtk.infer.detector import Detector
    from dbtk.infer.export import INT8_FLOAT_OPS, export_onnx

    quantized = tmp_path / "int8.onnx"
    export_onnx(checkpoint, quantized, precision="int8", calibration=images)
    assert _io_types(quantized) == ("tensor(uint8)", "tensor(float)")
    graph = onnx.load(str(quantized)).graph
    produced_by = {output: node for node in graph.node for output in node.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(produced_by[n.input[1]].op_type == "DequantizeLinear" for n in convs)  # int8 weights
    scales = {t.name: len(t.dims) for t in graph.initializer}
    assert all(scales[produced_by[n.input[1]].input[1]] == 1 for n in convs)  # one scale per output channel
    kept = [n for n in graph.node if n.op_type in INT8_FLOAT_OPS]
    assert kept and not any(i in produced_by and produced_by[i].op_type == "DequantizeLinear" for n in kept for i in n.input[1:])
    assert not any(n.op_type.startswith("QLinear") for n in graph.node)  # QDQ format
    assert quantized.stat().st_size < 0.4 * onnx_file.stat().st_size

    detector = Detector.load(quantized, "cpu")
    settings = json.loads(detector.runtime.metadata["quantization"])
    assert detector.runtime.precision == "int8" and settings["calibration_batches"] == 3 and settings["weights"] == "int8 per channel"
    expected = Detector.load(checkpoint, "cpu").runtime(np.stack([np.zeros((96, 128, 3), np.uint8) + 90]))
    assert np.abs(detector.runtime(np.stack([np.zeros((96, 128, 3), np.uint8) + 90])) - expected).mean() < 0.05
    assert sum(len(d) for d in detector(images)) > 0


@pytest.fixture(scope="module")
def labelled(images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three test pages as an ICDAR2015 split labelled with their text boxes."""
    from tests.data_fixtures import write_icdar

    gt = "\n".join(f"{x1},{y1},{x2},{y1},{x2},{y2},{x1},{y2},text" for x1, y1, x2, y2 in BOXES)
    items = {f"p{i}.jpg": (jpeg_bytes(np.ascontiguousarray(image[..., ::-1])), gt) for i, image in enumerate(images)}
    return write_icdar(tmp_path_factory.mktemp("labelled"), items)


def test_cli_int8_check_reports_hmean_and_latency_of_both(checkpoint: Path, labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "m-int8.onnx"
    result = run_dbtk("export", str(checkpoint), "--out", str(out), "--quantize", "int8", "--calibrate", str(labelled / "images"),
                      "--check", "--data", str(labelled), "--max-drop", "100")
    assert result.returncode == 0, result.stderr
    assert "onnx int8 →" in result.stdout and "quantizing to INT8, calibrated on 3 images" in result.stderr
    assert "checkpoint (torch fp32)" in result.stdout and "export (int8)" in result.stdout and "network ms/image" in result.stdout
    assert "within --max-drop 100" in result.stdout


def test_score_times_the_network_after_a_warm_up(checkpoint: Path, labelled: Path) -> None:
    import time

    from dbtk.data.formats import open_split
    from dbtk.infer.detector import Detector
    from dbtk.infer.evaluate import evaluate_detector
    from dbtk.infer.export import score

    reference = Detector.load(checkpoint, "cpu")
    calls = []

    class Slow:
        input_size = None

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            time.sleep(0.05 * len(batch))
            return reference.runtime(batch)

    result = score(Detector(Slow(), reference.recipe), open_split(str(labelled)))
    assert calls == [1, 1, 1, 1]  # the warm-up, then one call per page
    assert result.images == 3 and result.ms_per_image >= 50
    expected = evaluate_detector(reference, open_split(str(labelled))).summary
    assert (result.precision, result.recall, result.hmean) == (expected.precision, expected.recall, expected.hmean)


def test_check_fails_above_the_hmean_drop(checkpoint: Path, onnx_file: Path, labelled: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from dbtk.cli import export as command
    from dbtk.errors import CheckFailed
    from dbtk.infer import export as exporting
    from dbtk.infer.detector import Detector

    def fake_score(detector: Detector, _reader: object, _advance: object = None) -> exporting.Score:
        exported = getattr(detector.runtime, "precision", None) is not None
        return exporting.Score(0.9, 0.9, 0.885 if exported else 0.9, 3, 10.0 if exported else 30.0)

    monkeypatch.setattr(exporting, "score", fake_score)
    from dbtk.data.formats import open_split

    command._check_scores(str(checkpoint), str(onnx_file), open_split(str(labelled)), max_drop=1.6)  # 1.5 points: passes
    assert "3.00× the checkpoint's speed; within --max-drop 1.6" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match=r"the export loses 1.50 hmean points, more than --max-drop 1: hmean 0.8850 vs 0.9000"):
        command._check_scores(str(checkpoint), str(onnx_file), open_split(str(labelled)), max_drop=1.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--out", "m.safetensors", "--precision", "fp16"], "--precision and --quantize apply to ONNX exports"),
        (["--out", "m.onnx", "--precision", "fp16", "--quantize", "int8"], "--precision fp16 and --quantize int8: pick one"),
        (["--out", "m.onnx", "--calibrate", "x"], "--calibrate is for --quantize int8"),
        (["--out", "m.onnx", "--data", "."], "--data is what --check scores the export on"),
        (["--out", "m.onnx", "--quantize", "int8", "--check"], "--check of an INT8 export needs --data DIR"),
        (["--out", "m.onnx", "--quantize", "int8", "--check", "--data", ".", "--images", "x.jpg"], "--images compares probability maps"),
    ],
)
def test_cli_precision_option_errors(checkpoint: Path, tmp_path: Path, options: list[str], message: str) -> None:
    result = run_dbtk("export", str(checkpoint), *options, cwd=tmp_path)
    assert result.returncode == 2 and f"error: {message}" in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())
