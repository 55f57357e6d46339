"""Recipes: round trip, overrides, and one-line errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbtk import recipe as recipes
from dbtk.errors import DbtkError, RecipeError
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
        ("[train]\nbatch_size = 0\n", "train.batch_size in r.toml: must be between 1 and 1024, got 0"),
        ("[data]\nshrink_ratio = 1.5\n", "data.shrink_ratio in r.toml: must be strictly between 0 and 1, got 1.5"),
        ('[train]\nprecision = "f16"\n', "train.precision in r.toml: must be one of 'fp32', 'bf16', 'fp16', got 'f16'"),
        ("[data]\nimage_size = 650\n", "data.image_size in r.toml: must be a positive multiple of 32 up to 8192, got 650"),
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
        ("name.x=1", "bad --set 'name.x=1': 'name' is a string, not a table"),
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
    import torch
    from torch import nn

    class Encoder(nn.Module):
        channels = [4, 4, 4, 4]
        strides = [4, 8, 16, 32]
        def __init__(self, arch="x", warn=False):
            super().__init__()
            if warn:
                import warnings
                warnings.warn("loaded 3 of 4 encoder tensors")
            self.conv = nn.Conv2d(3, 4, 1)
        def forward(self, x):
            return [self.conv(x[..., ::s, ::s]) for s in self.strides]
    class Decoder(nn.Module):
        out_channels = 4
        def __init__(self, in_channels, channels=256, fail=""):
            super().__init__()
            if fail == "build":
                raise RuntimeError("boom while building")
            self.fail = fail
        def forward(self, features):
            if self.fail == "forward":
                raise RuntimeError("boom in forward")
            return features[0]
    class Head(nn.Module):
        def __init__(self, in_channels, k=50):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 1, 1)
        def forward(self, x, return_all=None):
            return {"prob": torch.sigmoid(self.conv(x))}
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


# ------------------------------------------------------------------------------------------------ --set
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trian.lr=1e-3", "unknown key 'trian' in --set 'trian.lr=1e-3' (did you mean 'train'?)"),
        ("train.lrr=1e-3", "unknown key 'train.lrr' in --set 'train.lrr=1e-3' (did you mean 'train.lr'?)"),
        ("data.train.imgs=x", "unknown key 'data.train.imgs' in --set 'data.train.imgs=x' (did you mean 'data.train.images'?)"),
        ("träin.lr=1", "unknown key 'träin' in --set 'träin.lr=1' (did you mean 'train'?)"),
        ("train.0=1", "unknown key 'train.0' in --set 'train.0=1'"),
        ("train.lr", "bad --set 'train.lr': expected KEY=VALUE"),
        ("=1", "bad --set '=1': expected KEY=VALUE"),
        ("train..lr=1", "bad --set 'train..lr=1': expected KEY=VALUE"),
        ("train.=1", "bad --set 'train.=1': expected KEY=VALUE"),
        ("train=5", "bad --set 'train=5': 'train' is a table, not a value"),
        ("model=resnet", "bad --set 'model=resnet': 'model' is a table, not a value"),
        ("train.lr.x=1", "bad --set 'train.lr.x=1': 'train.lr' is a float, not a table"),
        ("train.epochs.x=1", "bad --set 'train.epochs.x=1': 'train.epochs' is an integer, not a table"),
        ("data.train.images.x=1", "bad --set 'data.train.images.x=1': 'data.train.images' is a string, not a table"),
        ("loggers.0.name=x", "bad --set 'loggers.0.name=x': arrays of tables cannot be overridden"),
        ("model.encoder.out_indices.0=1", "bad --set 'model.encoder.out_indices.0=1': array items cannot be set one by one"),
        ("model.decoder={ name =", "bad --set 'model.decoder={ name =': not a valid inline table"),
    ],
)
def test_set_outside_the_schema_names_the_item(override: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        recipes.with_overrides(recipes.Recipe(), [override])
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lr=abc"], "train.lr in --set 'train.lr=abc': expected a number, got string 'abc'"),
        (["train.lr=abc", "train.epochs=3"], "train.lr in --set 'train.lr=abc': expected a number"),
        (["train.lr=abc", "train.lr=1e-3", "train.lr=[1]"], "train.lr in --set 'train.lr=[1]': expected a number"),
        (["train.batch_size=0"], "train.batch_size in --set 'train.batch_size=0': must be between 1 and 1024, got 0"),
        (["data.thresh_min=0.95"], "data.thresh_max in --set 'data.thresh_min=0.95': must be greater than thresh_min (0.95)"),
        (["train.lr={ a = 1 }"], "train.lr in --set 'train.lr={ a = 1 }': expected a number, got table"),
        (["data.val.annotations=a.json"], "data.val.images in --set 'data.val.annotations=a.json': missing required key"),
        (["model.decoder=3"], "unknown decoder '3'"),  # a component name is text: the registry checks it
    ],
)
def test_set_values_are_blamed_on_the_set_item(tmp_path: Path, overrides: list[str], message: str) -> None:
    path = _write(tmp_path, "[train]\nepochs = 2\n")
    with pytest.raises(DbtkError) as info:
        recipe = recipes.load(path, overrides)
        from dbtk.registry import registry

        recipes.check_components(recipe, registry, import_components=False)
    assert str(info.value).startswith(message) or message in str(info.value), str(info.value)
    assert "r.toml" not in str(info.value)


def test_file_errors_still_name_the_file_beside_a_set(tmp_path: Path) -> None:
    path = _write(tmp_path, "[train]\nbatch_size = 0\n")
    with pytest.raises(RecipeError, match=r"^train.batch_size in .*r.toml: must be between 1 and 1024, got 0$"):
        recipes.load(path, ["train.lr=1e-3", "data.crop=512"])


def test_set_takes_unicode_inline_tables_and_splits(tmp_path: Path) -> None:
    path = _write(tmp_path, '[data]\ntrain = "/data/train"\nformat = "receipt-json"\n')
    recipe = recipes.load(path, ["name=日本語", 'model.decoder={ name = "fpn", channels = 64 }', "data.train.annotations=/a.json"])
    assert recipe.name == "日本語"
    assert recipe.model.decoder == recipes.Component("fpn", {"channels": 64})
    assert recipe.data.train == recipes.Split("/data/train", "/a.json")


def test_set_unknown_key_hints_the_allowed_keys() -> None:
    with pytest.raises(RecipeError) as info:
        recipes.with_overrides(recipes.Recipe(), ["postprocess.tresh=0.3"])
    assert info.value.message == "unknown key 'postprocess.tresh' in --set 'postprocess.tresh=0.3' (did you mean 'postprocess.thresh'?)"
    assert info.value.hint is not None and info.value.hint.startswith("keys allowed in [postprocess]: thresh, box_thresh")


def _checkpoint(tmp_path: Path) -> Path:
    """A tiny weights file with its recipe, for the commands that read one."""
    from dbtk.io.checkpoint import save_weights
    from dbtk.models.builder import build_model

    recipe = recipes.with_overrides(recipes.Recipe(), ["model.decoder.channels=16"])
    path = tmp_path / "tiny.safetensors"
    save_weights(path, build_model(recipe.model), recipe)
    return path


def test_every_command_taking_set_refuses_keys_outside_the_schema(tmp_path: Path) -> None:
    from tests.data_fixtures import jpeg_bytes, text_image, write_icdar

    recipe = str(_write(tmp_path, ""))
    data = write_icdar(tmp_path / "data", {"page.jpg": (jpeg_bytes(text_image()), "8,10,40,10,40,20,8,20,hi\n")})
    bad = "--set=trian.lr=1e-3"
    commands = {
        "train": ["train", recipe, bad, "--dry-run"],
        "recipe check": ["recipe", "check", recipe, bad],
        "models": ["models", bad],
        "models RECIPE": ["models", recipe, bad],
        "doctor": ["doctor", "--recipe", recipe, bad],
        "eval": ["eval", str(_checkpoint(tmp_path)), "--data", str(data), "--device", "cpu", bad],
    }
    for name, args in commands.items():
        proc = run_dbtk(*args, cwd=tmp_path)
        assert proc.returncode == 2, (name, proc.stderr)
        assert_one_line_error(proc, "unknown key 'trian' in --set 'trian.lr=1e-3' (did you mean 'train'?)")


def test_cli_bad_value_in_set_names_set_not_the_file(tmp_path: Path) -> None:
    path = str(_write(tmp_path, ""))
    for args in (["recipe", "check", path, "--no-import"], ["train", path, "--dry-run"], ["models", path]):
        proc = run_dbtk(*args, "--set", "train.lr=abc")
        assert_one_line_error(proc, "train.lr in --set 'train.lr=abc': expected a number, got string 'abc'")


# ------------------------------------------------------------------------------------------------ runnable values
@pytest.mark.parametrize(
    ("key", "limit", "too_big"),
    [
        ("data.image_size", 8192, 1_000_000_000), ("data.crop", 8192, 8224), ("eval.long_side", 8192, 8224),
        ("train.batch_size", 1024, 1025), ("eval.batch_size", 1024, 1025), ("train.accumulate", 1024, 1025),
        ("train.workers", 256, 257), ("train.max_steps", 100_000_000, 100_000_001), ("train.epochs", 1_000_000, 1_000_001),
        ("train.warmup_steps", 100_000_000, 2**62), ("train.checkpoint_every", 100_000_000, 2**62),
        ("train.log_every", 100_000_000, 2**62), ("train.val_every_steps", 100_000_000, 2**62),
        ("train.max_bad_steps", 100_000_000, 2**62), ("train.dist_timeout", 604_800, 10**18), ("seed", 2**32 - 1, 2**62),
        ("postprocess.max_candidates", 100_000, 10**9), ("postprocess.min_size", 8192, 1e308), ("data.min_text_size", 8192, 1e308),
        ("data.scale_max", 8.0, 1e308), ("postprocess.unclip_ratio", 10.0, 1e308),
    ],
)
def test_every_size_is_bounded(key: str, limit: float, too_big: float) -> None:
    recipe = recipes.with_overrides(recipes.Recipe(), [f"{key}={limit}"])
    assert recipes._flatten(recipes.unstructure(recipe))[key] == limit
    with pytest.raises(RecipeError, match=rf"^{key} in --set '{key}=.*': must be .*{limit}"):
        recipes.with_overrides(recipes.Recipe(), [f"{key}={too_big}"])


def test_split_needs_its_images() -> None:
    with pytest.raises(RecipeError, match=r"^data.train.images in r.toml: missing required key$"):
        recipes.loads('[data]\ntrain = { annotations = "x.json" }\n', source="r.toml")
    with pytest.raises(RecipeError, match=r"^data.val.images in r.toml: must be a non-empty string, got ''$"):
        recipes.loads('[data]\nval = ""\n', source="r.toml")


def test_check_and_dry_run_build_and_run_the_model(tmp_path: Path) -> None:
    path = str(_write(tmp_path, '[model.decoder]\nchannels = 0\n[data]\nformat = { name = "synthetic", count = 4 }\ntrain = "train"\n'))
    needle = "model.decoder: decoder 'fpn' failed on a 1×3×64×64 input: RuntimeError: "
    assert_one_line_error(run_dbtk("recipe", "check", path), needle)
    assert_one_line_error(run_dbtk("train", path, "--dry-run", "--out", str(tmp_path / "run")), needle)
    proc = run_dbtk("models", path, "--size", "96", "64")
    assert_one_line_error(proc, "model.decoder: decoder 'fpn' failed on a 1×3×96×64 input: RuntimeError: ")
    assert "Initializing zero-element tensors" not in proc.stderr  # a failed build's warnings are dropped


def test_check_names_the_component_that_fails(tmp_path: Path, fake_components: None) -> None:
    build = _write(tmp_path, FAKE_RECIPE + "[model.decoder]\nname = 'fdec'\nfail = 'build'\n")
    assert_one_line_error(run_dbtk("recipe", "check", str(build)), "model.decoder: decoder 'fdec' failed to build: RuntimeError: boom while building")
    forward = _write(tmp_path, FAKE_RECIPE + "[model.decoder]\nname = 'fdec'\nfail = 'forward'\n")
    assert_one_line_error(run_dbtk("recipe", "check", str(forward)), "model.decoder: decoder 'fdec' failed on a 1×3×64×64 input: RuntimeError: boom in forward")


def test_check_shows_the_warnings_of_a_good_build(tmp_path: Path, fake_components: None) -> None:
    path = _write(tmp_path, FAKE_RECIPE.replace('encoder = "fenc"', 'encoder = { name = "fenc", warn = true }') + "[model.decoder]\nname = 'fdec'\n")
    proc = run_dbtk("recipe", "check", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "UserWarning: loaded 3 of 4 encoder tensors" in proc.stderr


def test_models_size_has_a_range() -> None:
    for size in (["0", "0"], ["16", "640"], ["640", "8193"]):
        proc = run_dbtk("models", "--size", *size)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "'--size'" in proc.stderr and "32<=x<=8192" in proc.stderr


def test_cli_bounds_are_the_recipes() -> None:
    from dbtk.cli import models, train

    assert models.MAX_SIDE == recipes.MAX_SIDE
    assert train.MAX_STEPS == recipes.MAX_STEPS
    proc = run_dbtk("train", "r.toml", "--stop-at", str(recipes.MAX_STEPS + 1))
    assert proc.returncode == 2 and "'--stop-at'" in proc.stderr and "Traceback" not in proc.stderr
