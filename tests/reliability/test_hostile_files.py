"""Hostile checkpoints and plugins: clear one-line errors, nothing unpickled or executed, the CLI stays usable."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest

from dbtk import recipe as recipes
from tests.conftest import run_dbtk
from tests.data_fixtures import jpeg_bytes, text_image, write_icdar
from tests.reliability.conftest import TALLY, run_cli


class Payload:
    """Unpickling this would create a file: proof that nothing was executed when it is not there."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, recipes.Recipe]:
    import torch

    from dbtk.io.checkpoint import save_weights
    from dbtk.models.builder import build_model

    recipe = recipes.loads('[model.decoder]\nchannels = 16\n[eval]\nlong_side = 64\n[data]\nformat = { name = "synthetic", count = 4 }\ntrain = "train"\n')
    torch.manual_seed(0)
    model = build_model(recipe.model)
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    save_weights(path, model, recipe)
    return path, {k: v.clone() for k, v in model.state_dict().items()}, recipe


def _hostile(folder: Path, good: tuple[Path, dict, recipes.Recipe]) -> dict[str, tuple[Path, str]]:
    """name -> (file, fragment the error must contain)."""
    from safetensors.torch import save_file

    from dbtk.io.checkpoint import FORMAT

    path, tensors, recipe = good
    text = recipes.dumps(recipe)
    data = path.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}

    def write(name: str, payload: bytes, fragment: str) -> None:
        target = folder / name
        target.write_bytes(payload)
        cases[name] = (target, fragment)

    def tensors_file(name: str, body: dict, metadata: dict, fragment: str) -> None:
        target = folder / name
        save_file(body, str(target), metadata=metadata)
        cases[name] = (target, fragment)

    write("truncated.safetensors", data[: len(data) // 3], "not a readable safetensors file")
    write("header-only.safetensors", data[:8], "not a readable safetensors file")
    write("huge-header.safetensors", struct.pack("<Q", 2**60) + b"{}", "not a readable safetensors file")
    write("empty.safetensors", b"", "not a readable safetensors file")
    write("pickle.safetensors", pickle.dumps(Payload(folder / "PWNED")), "not a readable safetensors file")
    import torch

    torch.save({"state_dict": Payload(folder / "PWNED")}, folder / "torch.pt")
    write("torch-zip.safetensors", (folder / "torch.pt").read_bytes(), "not a readable safetensors file")
    meta = {"format": FORMAT, "recipe": text}
    wrong = dict(tensors)
    first = next(k for k, v in wrong.items() if v.ndim == 4)
    wrong[first] = torch.zeros(1, 1, 1, 1)
    tensors_file("wrong-shape.safetensors", wrong, meta, "wrong shape")
    tensors_file("missing-keys.safetensors", {k: v for i, (k, v) in enumerate(tensors.items()) if i % 3}, meta, "missing")
    tensors_file("not-installed.safetensors", tensors, {"format": FORMAT, "recipe": text.replace('name = "fpn"', 'name = "transformer-neck"')},
                 "unknown decoder 'transformer-neck'")
    tensors_file("bad-recipe.safetensors", tensors, {"format": FORMAT, "recipe": text.replace("batch_size = 2", "bach_size = 2", 1)}, "bach_size")
    tensors_file("not-toml.safetensors", tensors, {"format": FORMAT, "recipe": "[[[ nope"}, "invalid TOML")
    tensors_file("no-metadata.safetensors", tensors, {}, "has no dbtk metadata")
    write("garbage.onnx", b"\x08\x07garbage" * 20, "not a loadable ONNX model")
    return cases


def test_hostile_checkpoints(good: tuple[Path, dict, recipes.Recipe], tmp_path: Path) -> None:
    cases = _hostile(tmp_path, good)
    data = write_icdar(tmp_path / "data", {"page.jpg": (jpeg_bytes(text_image(64, 48)), "8,10,40,10,40,20,8,20,hi\n")})
    image = data / "images" / "page.jpg"
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(recipes.dumps(good[2]))
    # --resume reads the training state before building from the file's recipe: files without one say so.
    no_state = {"wrong-shape.safetensors", "missing-keys.safetensors", "not-installed.safetensors"}
    for name, (path, fragment) in cases.items():
        commands = {
            "eval": ["eval", str(path), "--data", str(data), "--device", "cpu"],
            "predict": ["predict", str(path), str(image), "--out", str(tmp_path / "pred"), "--device", "cpu"],
            "export": ["export", str(path), "--out", str(tmp_path / "out.safetensors")],
        }
        if path.suffix == ".safetensors":
            commands["train"] = ["train", str(recipe_path), "--out", str(tmp_path / "run"), "--resume", str(path), "--device", "cpu"]
        for command_name, command in commands.items():
            result = run_cli(command)
            TALLY["hostile checkpoint loads"] += 1
            expected = "holds weights only, no training state" if command_name == "train" and name in no_state else fragment
            if command_name == "export" and path.suffix == ".onnx":
                expected = "export starts from a dbtk checkpoint"
            result.assert_clean_error(expected)
    assert not (tmp_path / "PWNED").exists(), "a pickle payload was executed"


def test_resume_from_weights_only_or_other_model(good: tuple[Path, dict, recipes.Recipe], tmp_path: Path) -> None:
    path, _, recipe = good
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(recipes.dumps(recipe))
    weights_only = run_cli(["train", str(recipe_path), "--out", str(tmp_path / "a"), "--resume", str(path), "--device", "cpu"])
    weights_only.assert_clean_error("holds weights only, no training state")
    other = tmp_path / "other.toml"
    other.write_text(recipes.dumps(recipe).replace("channels = 16", "channels = 32"))
    TALLY["hostile checkpoint loads"] += 2
    mismatch = run_cli(["train", str(other), "--out", str(tmp_path / "b"), "--resume", str(path), "--device", "cpu"])
    mismatch.assert_clean_error("holds weights only")


# ------------------------------------------------------------------------------------------------ plugins
HOSTILE_PLUGINS = {
    "raising_plugin": "raise RuntimeError('boom: built against another torch')\n",
    "hanging_plugin": "import time\ntime.sleep(60)\nclass Logger:\n    pass\n",
    "chatty_plugin": "print('hello from a plugin')\nfrom dbtk.loggers.jsonl import JsonlLogger as Logger\n",
}


def test_hostile_plugins_never_take_the_cli_down(fake_dists, tmp_path: Path) -> None:  # noqa: ANN001
    fake_dists(
        "dbtk-hostile",
        {"dbtk.loggers": {"raising": "raising_plugin:Logger", "hanging": "hanging_plugin:Logger", "chatty": "chatty_plugin:Logger"}},
        HOSTILE_PLUGINS,
    )
    TALLY["hostile plugins"] += len(HOSTILE_PLUGINS)
    checked = run_dbtk("plugins", "--check", "--json", "--timeout", "2", timeout=60)
    assert checked.returncode == 0, checked.stderr
    rows = {r["name"]: r for r in json.loads(checked.stdout)}  # stdout stays valid JSON despite the chatty plugin
    assert rows["raising"]["status"] == "broken" and "boom: built against another torch" in rows["raising"]["detail"]
    assert rows["hanging"]["status"] == "timed out"
    assert rows["chatty"]["status"] == "ok" and rows["jsonl"]["status"] == "ok"

    for command in (["--help"], ["plugins"], ["recipe", "check", "recipes/quickstart.toml", "--json"]):
        result = run_dbtk(*command, timeout=60)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (command, result.stderr)

    recipe = tmp_path / "r.toml"
    recipe.write_text('[[loggers]]\nname = "raising"\n')
    broken = run_dbtk("recipe", "check", str(recipe))
    assert broken.returncode == 2 and "dbtk-hostile" in broken.stderr and "boom" in broken.stderr and "Traceback" not in broken.stderr
    recipe.write_text('[[loggers]]\nname = "chatty"\n')
    chatty = run_dbtk("recipe", "check", str(recipe), "--json")
    assert chatty.returncode == 0, chatty.stderr
    json.loads(chatty.stdout)  # a plugin's print() must not corrupt machine-readable output
