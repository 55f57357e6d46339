"""--resume continues the run's own recipe: only the keys documented as safe may change, the rest are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbtk import recipe as recipes
from dbtk.errors import DbtkError, RecipeError
from tests.conftest import run_dbtk

RUN = recipes.with_overrides(recipes.Recipe(), ["train.max_steps=12", "train.epochs=6"])


def changed(*overrides: str) -> recipes.Recipe:
    return recipes.with_overrides(RUN, list(overrides))


def test_unchanged_recipe_resumes() -> None:
    recipes.check_resume(RUN, RUN, "RUN")


@pytest.mark.parametrize(
    "override",
    ["train.max_steps=20", "train.epochs=9", "train.log_every=1", "train.val_every=0", "train.val_every_steps=5",
     "train.checkpoint_every=3", "train.workers=0", "train.device=cpu", "train.dist_timeout=60", 'loggers=[{ name = "jsonl" }]'],
)
def test_safe_keys_may_change(override: str) -> None:
    recipes.check_resume(RUN, changed(override), "RUN")
    recipes.check_resume(RUN, changed(override, "train.max_steps=13", "train.log_every=2"), "RUN")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_steps=0", "--resume: train.max_steps may only grow: it is 12 in the run, 0 on the command line"),
        ("train.max_steps=8", "--resume: train.max_steps may only grow: it is 12 in the run, 8 on the command line"),
        ("train.epochs=2", "--resume: train.epochs may only grow: it is 6 in the run, 2 on the command line"),
        ("train.lr=0.01", "--resume: the run's recipe differs from the command line's at train.lr: 0.001 in the run, 0.01 on the command line"),
        ("data.train=/other", "--resume: the run's recipe differs from the command line's at data.train: unset in the run, \"/other\""),
        ("model.decoder.channels=64", "at model.decoder.channels: 256 in the run, 64 on the command line"),
        ("train.precision=fp32", "at train.precision: \"bf16\" in the run, \"fp32\" on the command line"),
        ("model.decoder.channels=256.0", "at model.decoder.channels: 256 in the run, 256.0 on the command line"),
    ],
)
def test_other_differences_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        recipes.check_resume(RUN, changed(override), "RUN/checkpoints/last.safetensors (embedded recipe)")
    assert message in info.value.message, info.value.message


def test_refusal_says_how_to_continue_and_lists_every_key() -> None:
    with pytest.raises(RecipeError) as info:
        recipes.check_resume(RUN, changed("train.lr=0.01", "data.crop=512", "train.workers=0"), "RUN (embedded recipe)")
    assert info.value.message.endswith("at data.crop: 0 in the run, 512 on the command line (also differs: train.lr)")
    assert info.value.hint is not None and "--set data.crop=0" in info.value.hint and "RUN (embedded recipe)" in info.value.hint
    with pytest.raises(RecipeError) as info:
        recipes.check_resume(RUN, changed("train.max_steps=0"), "RUN")
    assert info.value.hint is not None and info.value.hint.startswith("--set train.max_steps=12 continues the run as planned")


def test_an_all_epochs_run_cannot_be_capped_on_resume() -> None:
    all_epochs = recipes.Recipe()
    with pytest.raises(RecipeError, match="train.max_steps may only grow: it is 0 in the run, 100"):
        recipes.check_resume(all_epochs, recipes.with_overrides(all_epochs, ["train.max_steps=100"]), "RUN")


def test_relative_paths_of_older_runs_are_the_current_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    old = recipes.structure({"data": {"train": "data/train"}})  # as older checkpoints embedded it: as given
    requested = recipes.with_overrides(recipes.Recipe(), ["data.train=data/train"])
    recipes.check_resume(old, requested, "RUN")
    with pytest.raises(RecipeError, match="at data.train"):
        recipes.check_resume(old, recipes.with_overrides(requested, ["data.train=other/train"]), "RUN")


TINY = """
name = "tiny"
seed = 3
[model.decoder]
channels = 16
[data]
format = { name = "synthetic", count = 12, val_count = 4, width = 64, height = 64, min_height = 8, max_height = 16 }
train = "train"
image_size = 64
[train]
batch_size = 2
precision = "fp32"
workers = 0
log_every = 1
val_every = 0
checkpoint_every = 2
[[loggers]]
name = "jsonl"
"""


def error_line(proc) -> str:  # noqa: ANN001 - a CompletedProcess
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return next(line for line in proc.stderr.splitlines() if line.startswith("error:"))


def test_cli_resume_continues_the_runs_recipe(tmp_path: Path) -> None:
    from dbtk.io.checkpoint import read_training_state

    recipe, out = tmp_path / "tiny.toml", tmp_path / "run"
    recipe.write_text(TINY)
    first = run_dbtk("train", str(recipe), "--out", str(out), "--set", "train.max_steps=4", "--stop-at", "2")
    assert first.returncode == 0, first.stderr
    # The 4-step run, resumed without its --set, would plan the recipe file's 6 epochs × 6 steps: refused.
    plain = run_dbtk("train", str(recipe), "--out", str(out), "--resume")
    assert "train.max_steps may only grow: it is 4 in the run, 0 on the command line" in error_line(plain)
    other = run_dbtk("train", str(recipe), "--out", str(out), "--resume", "--set", "train.max_steps=4", "--set", "train.lr=5e-4")
    assert "differs from the command line's at train.lr: 0.001 in the run, 0.0005 on the command line" in error_line(other)
    (out / "recipe.toml").unlink()  # the checkpoint carries the run's recipe
    dry = run_dbtk("train", str(recipe), "--out", str(out), "--resume", "--set", "train.max_steps=4", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "6 steps/epoch, 4 steps" in dry.stderr and "resuming at step 2" in dry.stderr
    stale = out / ".recipe.toml.x1y2.tmp"  # a recipe.toml write killed halfway
    stale.write_text("name = ")
    longer = run_dbtk("train", str(recipe), "--out", str(out), "--resume", "--set", "train.max_steps=5", "--set", "train.log_every=2")
    assert longer.returncode == 0, longer.stderr
    _, embedded, state = read_training_state(out / "checkpoints" / "last.safetensors")
    assert state["position"]["step"] == 5
    assert (embedded.train.max_steps, embedded.train.log_every) == (5, 2)
    assert recipes.loads((out / "recipe.toml").read_text()) == embedded
    assert not stale.exists()


def test_torchrun_environment_is_read_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbtk.cli.train import torchrun_place

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert torchrun_place() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert torchrun_place() == (1, 2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DbtkError, match="WORLD_SIZE='two' is not an integer"):
        torchrun_place()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(DbtkError, match="RANK=1 does not fit WORLD_SIZE=1"):
        torchrun_place()
