"""Recipe paths: relative to the recipe file (with --set, to the current folder), absolute in the run's recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbtk import recipe as recipes
from tests.conftest import REPO, run_dbtk
from tests.data_fixtures import jpeg_bytes, text_image, write_icdar

PATHS = """
[model.encoder]
pretrained = "weights/r18.safetensors"
[data]
train = "../data/train"
val = { images = "val/images", annotations = "/elsewhere/val.json" }
cache = "cache"
"""


@pytest.fixture
def recipe_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/recipes/r.toml, with the current folder moved to tmp/cwd."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "cwd").mkdir()
    path = tmp_path / "recipes" / "r.toml"
    path.write_text(PATHS)
    monkeypatch.chdir(tmp_path / "cwd")
    return path


def test_file_paths_resolve_against_the_recipe_folder(recipe_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    for given in (recipe_file, Path("../recipes/r.toml")):
        recipe = recipes.load(given)
        assert recipe.data.train == recipes.Split(str(tmp_path / "data" / "train"))
        assert recipe.data.val == recipes.Split(str(folder / "val" / "images"), "/elsewhere/val.json")
        assert recipe.data.cache == str(folder / "cache")
        assert recipe.model.encoder.params == {"arch": "resnet18", "pretrained": str(folder / "weights" / "r18.safetensors")}


def test_set_paths_resolve_against_the_current_folder(recipe_file: Path, tmp_path: Path) -> None:
    cwd, folder = tmp_path / "cwd", tmp_path / "recipes"
    recipe = recipes.load(recipe_file, ["data.train=mine/train", "data.val.annotations=v.json", "data.cache=c",
                                        "model.encoder.pretrained=w.pt"])
    assert recipe.data.train == recipes.Split(str(cwd / "mine" / "train"))
    assert recipe.data.val == recipes.Split(str(folder / "val" / "images"), str(cwd / "v.json"))  # images: from the file
    assert recipe.data.cache == str(cwd / "c")
    assert recipe.model.encoder.params["pretrained"] == str(cwd / "w.pt")
    defaults = recipes.with_overrides(recipes.Recipe(), ["data.val=v", 'data.train={ images = "i", annotations = "a.json" }'])
    assert defaults.data.val == recipes.Split(str(cwd / "v"))
    assert defaults.data.train == recipes.Split(str(cwd / "i"), str(cwd / "a.json"))


def test_names_modes_and_flags_are_not_paths(recipe_file: Path) -> None:
    for fmt in ("synthetic", "dbtk:synthetic", "{ name = 'synthetic', count = 4 }"):
        recipe_file.write_text(f'[data]\nformat = {fmt if fmt.startswith("{") else repr(fmt)}\ntrain = "train"\nval = "val"\n')
        recipe = recipes.load(recipe_file, ["data.cache=auto"])
        assert (recipe.data.train, recipe.data.val) == (recipes.Split("train"), recipes.Split("val"))  # split names
        assert recipe.data.cache == "auto"
    recipe_file.write_text('[data]\ncache = "off"\n[model.encoder]\npretrained = false\n')
    recipe = recipes.load(recipe_file)
    assert recipe.data.cache == "off" and recipe.model.encoder.params["pretrained"] is False
    recipe_file.write_text('[data]\ntrain = "~/data/train"\n')
    assert recipes.load(recipe_file).data.train == recipes.Split(str(Path.home() / "data" / "train"))


def test_shipped_recipes_point_where_they_did_from_the_repository_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    docs = recipes.load(REPO / "recipes" / "docs.toml")
    assert docs.data.train == recipes.Split(str(REPO.parent / "shared" / "data" / "docs-dev" / "train"))
    assert recipes.load(REPO / "recipes" / "dbnetpp.toml").data.val == docs.data.val
    receipts = recipes.load(REPO / "recipes" / "rtx3060.toml")
    assert receipts.data.train == recipes.Split(str(REPO / "datasets" / "images" / "train"), str(REPO / "datasets" / "jsons" / "train.json"))
    assert recipes.load(REPO / "recipes" / "quickstart.toml").data.train == recipes.Split("train")


def test_shipped_recipes_work_from_another_folder(tmp_path: Path) -> None:
    check = run_dbtk("recipe", "check", str(REPO / "recipes" / "docs.toml"), "--json", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert str(REPO.parent / "shared" / "data" / "docs-dev" / "val") in check.stdout
    dry = run_dbtk("train", str(REPO / "recipes" / "quickstart.toml"), "--dry-run", "--set", "train.workers=0", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert f"run folder would be {tmp_path / 'runs' / 'quickstart'}" in dry.stdout


def test_not_found_errors_show_the_absolute_path(tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text('[data]\ntrain = "missing/train"\n')
    proc = run_dbtk("train", "../r.toml", "--dry-run", cwd=tmp_path / "cwd")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"data.train: image folder not found: {tmp_path / 'missing' / 'train'}" in proc.stderr
    proc = run_dbtk("recipe", "check", "nope.toml", cwd=tmp_path / "cwd")
    assert f"error: recipe not found: {tmp_path / 'cwd' / 'nope.toml'}" in proc.stderr
    proc = run_dbtk("train", "../r.toml", "--resume", "--out", "run", cwd=tmp_path / "cwd")
    assert f"error: nothing to resume: {tmp_path / 'cwd' / 'run' / 'checkpoints' / 'last.safetensors'} does not exist" in proc.stderr


TINY_ICDAR = """
name = "paths"
[model.decoder]
channels = 16
[data]
train = "data/train"
image_size = 64
augment = false
[train]
max_steps = 2
batch_size = 2
precision = "fp32"
workers = 0
log_every = 1
val_every = 0
checkpoint_every = 1
[[loggers]]
name = "jsonl"
"""


def test_run_recipe_is_absolute_and_resume_works_from_anywhere(tmp_path: Path) -> None:
    project = tmp_path / "project"
    image = jpeg_bytes(text_image(64, 48))
    write_icdar(project / "data" / "train", {f"p{i}.jpg": (image, "8,10,40,10,40,20,8,20,hi\n") for i in range(4)})
    (project / "r.toml").write_text(TINY_ICDAR)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = run_dbtk("train", "../project/r.toml", "--out", "run", "--stop-at", "1", "--device", "cpu", cwd=tmp_path / "a")
    assert first.returncode == 0, first.stderr
    run = tmp_path / "a" / "run"
    written = recipes.loads((run / "recipe.toml").read_text())
    assert written.data.train == recipes.Split(str(project / "data" / "train"))
    resumed = run_dbtk("train", "../project/r.toml", "--out", "../a/run", "--resume", "--device", "cpu", cwd=tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr
    assert "finished 2 steps" in resumed.stdout
