"""Recipes: round trip, overrides, and one-line errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbtk import recipe as recipes
from dbtk.errors import RecipeError
from tests.conftest import run_dbtk

FULL = """
name = "receipts"
seed = 7

[model.encoder]
name = "timm"
arch = "resnet50"
pretrained = false
out_indices = [1, 2, 3, 4]

[model.decoder]
name = "fpn"
channels = 128

[model.head]
name = "db"
k = 50

[loss]
name = "db"
prob_weight = 5.0

[data]
format = { name = "receipt-json", min_size = 4 }
train = { images = "datasets/images/train", annotations = "datasets/jsons/train.json" }
val = "data/val"
image_size = 640
crop = 512
shrink_ratio = 0.4

[train]
epochs = 3
batch_size = 2
accumulate = 2
precision = "fp16"
lr = 5e-4

[postprocess]
polygon = true

[eval]
long_side = 1280

[[loggers]]
name = "console"

[[loggers]]
name = "tensorboard"
flush_secs = 30
"""


def test_full_recipe_round_trips() -> None:
    recipe = recipes.loads(FULL)
    assert recipe.model.encoder.params == {"arch": "resnet50", "pretrained": False, "out_indices": [1, 2, 3, 4]}
    assert recipe.data.train.annotations == "datasets/jsons/train.json"
    assert recipe.data.val.images == "data/val" and recipe.data.val.annotations is None
    assert recipe.data.format.name == "receipt-json" and recipe.data.format.params == {"min_size": 4}
    assert recipe.loggers[1].params == {"flush_secs": 30}
    assert recipes.loads(recipes.dumps(recipe)) == recipe


def test_defaults_round_trip() -> None:
    assert recipes.loads(recipes.dumps(recipes.Recipe())) == recipes.Recipe()
    assert recipes.loads("") == recipes.Recipe()


def test_overrides_are_typed_by_schema() -> None:
    data = recipes.tomllib.loads(FULL)
    for override in ["train.lr=1e-4", "name=123", "train.compile=true", "model.decoder.channels=64", "data.val=/tmp/v"]:
        recipes.apply_override(data, override)
    recipe = recipes.structure(data)
    assert recipe.train.lr == 1e-4
    assert recipe.name == "123"
    assert recipe.train.compile is True
    assert recipe.model.decoder.params["channels"] == 64
    assert recipe.data.val.images == "/tmp/v"


def test_override_of_unwritten_component_starts_from_default() -> None:
    data: dict = {}
    recipes.apply_override(data, "model.decoder.channels=64")
    assert recipes.structure(data).model.decoder == recipes.Component("fpn", {"channels": 64})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nbach_size = 4\n", "unknown key 'train.bach_size' in r.toml (did you mean 'train.batch_size'?)"),
        ("[trian]\nepochs = 4\n", "unknown key 'trian' in r.toml (did you mean 'train'?)"),
        ('[train]\nbatch_size = "4"\n', "train.batch_size in r.toml: expected an integer, got string '4'"),
        ("[train]\nbatch_size = 0\n", "train.batch_size in r.toml: must be >= 1, got 0"),
        ("[data]\nshrink_ratio = 1.5\n", "data.shrink_ratio in r.toml: must be strictly between 0 and 1, got 1.5"),
        ('[train]\nprecision = "f16"\n', "train.precision in r.toml: must be one of 'fp32', 'bf16', 'fp16', got 'f16'"),
        ("[data]\nimage_size = 650\n", "data.image_size in r.toml: must be a positive multiple of 32, got 650"),
        ("[data]\nthresh_min = 0.9\n", "data.thresh_max in r.toml: must be greater than thresh_min (0.9), got 0.7"),
        ("[[loggers]]\nname = 'console'\n[[loggers]]\nnmae = 'x'\n", "loggers.1.name in r.toml: is required: the registered name of the component"),
        ('[data]\ntrain = { images = "a", annotation = "b" }\n', "unknown key 'data.train.annotation' in r.toml (did you mean 'data.train.annotations'?)"),
    ],
)
def test_invalid_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        recipes.loads(text, source="r.toml")
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr", "bad --set 'train.lr': expected KEY=VALUE"),
        ("=3", "bad --set '=3': expected KEY=VALUE"),
        ("loggers.0.name=x", "bad --set 'loggers.0.name=x': arrays of tables cannot be overridden"),
        ("name.x=1", "bad --set 'name.x=1': 'name' is not a table"),
    ],
)
def test_bad_override_syntax(override: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        recipes.apply_override({"name": "n"}, override)
    assert str(info.value) == message


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def assert_one_line_error(proc, needle: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1 and needle in error_lines[0], proc.stderr
    assert all(line.startswith(("error:", "hint:", "•")) for line in lines), proc.stderr


def test_cli_misspelled_key(tmp_path: Path) -> None:
    proc = run_dbtk("recipe", "check", str(_write(tmp_path, "[train]\nbach_size = 4\n")), "--no-import")
    assert_one_line_error(proc, "unknown key 'train.bach_size'")
    assert "did you mean 'train.batch_size'?" in proc.stderr


def test_cli_wrong_type(tmp_path: Path) -> None:
    proc = run_dbtk("recipe", "check", str(_write(tmp_path, "[train]\nlr = 'fast'\n")), "--no-import")
    assert_one_line_error(proc, "train.lr")


def test_cli_out_of_range(tmp_path: Path) -> None:
    proc = run_dbtk("recipe", "check", str(_write(tmp_path, "[train]\nepochs = -1\n")), "--no-import")
    assert_one_line_error(proc, "train.epochs")


def test_cli_bad_set(tmp_path: Path) -> None:
    path = str(_write(tmp_path, ""))
    assert_one_line_error(run_dbtk("recipe", "check", path, "--set", "train.lr"), "bad --set 'train.lr'")
    assert_one_line_error(run_dbtk("recipe", "check", path, "--set", "train.lr=abc", "--no-import"), "train.lr")


def test_cli_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(run_dbtk("recipe", "check", str(_write(tmp_path, "[train\n"))), "invalid TOML")
    assert_one_line_error(run_dbtk("recipe", "check", str(tmp_path / "nope.toml")), "recipe not found")


def test_cli_debug_shows_traceback(tmp_path: Path) -> None:
    proc = run_dbtk("--debug", "recipe", "check", str(_write(tmp_path, "[train]\nbach_size = 4\n")))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


FAKES = """
    class Encoder:
        def __init__(self, arch="x"): pass
    class Decoder:
        def __init__(self, in_channels, channels=256): pass
    class Head:
        def __init__(self, in_channels, k=50): pass
    class Loss:
        def __init__(self): pass
    class Data:
        def __init__(self, split=None): pass
    class Logger:
        def __init__(self, run_dir): pass
"""
FAKE_RECIPE = """
[model]
encoder = "fenc"
head = "fhead"
[loss]
name = "floss"
[data]
format = "fdata"
[[loggers]]
name = "flog"
"""


@pytest.fixture
def fake_components(fake_dists) -> None:
    groups = {"encoders": "fenc:Encoder", "decoders": "fdec:Decoder", "heads": "fhead:Head",
              "losses": "floss:Loss", "datasets": "fdata:Data", "loggers": "flog:Logger"}
    fake_dists(
        "dbtk-fakes",
        {f"dbtk.{group}": {value.split(":")[0]: value.replace(value.split(":")[0], "fakes", 1)} for group, value in groups.items()},
        {"fakes": FAKES},
    )


def test_cli_unknown_component(tmp_path: Path, fake_components: None) -> None:
    proc = run_dbtk("recipe", "check", str(_write(tmp_path, FAKE_RECIPE + "[model.decoder]\nname = 'fdce'\n")), "--no-import")
    assert_one_line_error(proc, "model.decoder: unknown decoder 'fdce' (did you mean 'fdec'?)")


def test_cli_checks_component_parameters(tmp_path: Path, fake_components: None) -> None:
    good = _write(tmp_path, FAKE_RECIPE + "[model.decoder]\nname = 'fdec'\nchannels = 64\n")
    proc = run_dbtk("recipe", "check", str(good))
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout and "dbtk-fakes 0.1" in proc.stdout

    bad = _write(tmp_path, FAKE_RECIPE + "[model.decoder]\nname = 'fdec'\nchanels = 64\n")
    proc = run_dbtk("recipe", "check", str(bad))
    assert_one_line_error(proc, "model.decoder: unknown parameter 'chanels' for decoder 'fdec' (did you mean 'channels'?)")


def test_shipped_recipes_are_valid() -> None:
    from dbtk.registry import registry
    from tests.conftest import REPO

    paths = sorted((REPO / "recipes").glob("*.toml"))
    assert {p.name for p in paths} >= {"quickstart.toml", "rtx3060.toml", "docs.toml"}
    for path in paths:
        recipe = recipes.load(path)
        recipes.check_components(recipe, registry)  # imports every component and checks its parameters
