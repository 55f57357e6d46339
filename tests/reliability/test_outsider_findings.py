"""Regressions from an outside tester's round: each was a traceback, a modified input or a silent wrong answer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import run_dbtk
from tests.data_fixtures import GOOD_LINE, jpeg_bytes, text_image, write_icdar
from tests.reliability.conftest import run_cli

pytestmark = pytest.mark.reliability


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path).encode() + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()


@pytest.fixture
def split(tmp_path: Path) -> Path:
    image = jpeg_bytes(text_image())
    return write_icdar(tmp_path / "val", {"a.jpg": (image, GOOD_LINE + "\n"), "b.jpg": (image, GOOD_LINE + "\n")})


def one_error(result) -> None:  # noqa: ANN001
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("value", ["1e39", "1e308", "4e38"])
def test_huge_prediction_coordinates_never_reach_geos(split: Path, tmp_path: Path, value: str) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in ("a", "b"):
        (pred / f"res_{name}.txt").write_text(f"{value},15,80,15,80,45,20,45\n8,10,40,10,40,20,8,20\n")
    result = run_dbtk("eval", "--pred", str(pred), "--data", str(split), "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["clean-data", "{split}", "--check", "--report", "{split}/gts/gt_a.txt"],
        ["clean-data", "{split}", "--out", "{split}/gts/clean"],
        ["clean-data", "{split}/images", "--annotations", "{split}/gts", "--out", "{split}"],
        ["convert", "{split}", "--from", "icdar2015", "--to", "coco", "--out", "{tmp}/x", "--report", "{split}/r.json"],
        ["eval", "--pred", "{split}/gts", "--data", "{split}", "--vis", "{split}/images"],
    ],
)
def test_outputs_never_land_in_inputs(split: Path, tmp_path: Path, argv: list[str]) -> None:
    before = digest(split)
    one_error(run_dbtk(*(a.format(split=split, tmp=tmp_path) for a in argv)))
    assert digest(split) == before


def test_eval_refuses_when_no_image_can_be_scored(tmp_path: Path) -> None:
    image = jpeg_bytes(text_image())
    bad = write_icdar(tmp_path / "bad", {"a.jpg": (image, "nan,1,2,3,4,5,6,7,x\n"), "b.jpg": (b"", GOOD_LINE + "\n")})
    result = run_dbtk("eval", "--pred", str(bad / "gts"), "--data", str(bad))
    one_error(result)
    assert "nothing scored" in result.stderr


def test_a_logger_file_outside_the_run_folder_is_refused(tmp_path: Path) -> None:
    from tests.test_train import TINY

    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.replace("PRECISION", "fp32"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    result = run_dbtk("train", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu",
                      "--set", 'loggers=[{name="jsonl", filename="../victim.txt"}]')
    one_error(result)
    assert victim.read_text() == "precious\n"


# ------------------------------------------------------------------ values that pass the schema but cannot run
SYNTHETIC = """
[model.decoder]
channels = 16
[data]
format = { name = "synthetic", count = 4, val_count = 2, width = 64, height = 64, min_height = 8, max_height = 16 }
train = "train"
val = "val"
image_size = 64
"""


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(SYNTHETIC)
    return path


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ('data.format={name="synthetic", count=-1}', ("data.train", "count", "between 1 and")),
        ('data.format={name="synthetic", count=18446744073709551617}', ("data.train", "count", "between 1 and")),
        ('data.format={name="synthetic", width=0}', ("data.train", "width")),
        ('data.format={name="synthetic", curved=2.0}', ("data.train", "curved")),
        ('data.format={name="synthetic", seed=-1}', ("data.train", "seed")),
        ('data.format={name="synthetic", count="8"}', ("data.format", "'count'", "an integer", "got string")),
        ('data.format={name="synthetic", count=1.5}', ("data.format", "'count'", "an integer", "got float")),
        ('data.format={name="synthetic", rotate=true}', ("data.format", "'rotate'", "a number", "got boolean")),
        ('model.decoder={name="fpn", channels="wide"}', ("model.decoder", "'channels'", "got string")),
        ("train.device=tpu", ("train.device", "'cuda:N'")),
        ("train.device=cuda:x", ("train.device",)),
        ("train.device=meta", ("train.device",)),
        ("train.device=cuda:99999999999999999999", ("train.device",)),
        ("train.device=cuda:０", ("train.device",)),
    ],
)
def test_recipe_check_refuses_what_could_not_run(synthetic: Path, override: str, fragments: tuple[str, ...]) -> None:
    """Checked by the reader's own checks and by the components' annotations when the recipe is checked, not
    at the first step of training; devices by what dbtk can run on."""
    run_cli(["recipe", "check", str(synthetic), "--set", override]).assert_clean_error(*fragments)


def test_the_checked_recipe_itself_passes(synthetic: Path) -> None:
    result = run_cli(["recipe", "check", str(synthetic), "--set", "train.device=cuda:1"])
    assert result.code == 0, result.stderr


@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:", "CPU"])
def test_train_device_option_is_checked_before_anything_is_built(synthetic: Path, tmp_path: Path, device: str) -> None:
    result = run_cli(["train", str(synthetic), "--out", str(tmp_path / "run"), "--device", device, "--dry-run"])
    result.assert_clean_error("--device", repr(device))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["tpu", "meta", "xpu", "cuda:", "CPU", "cpu:0", "cuda:2147483648", "cuda:０"])
def test_every_device_option_follows_the_recipe_rule(device: str) -> None:
    """predict, eval, export, serve and doctor resolve --device through io.device: the same rule as train.device."""
    from dbtk import recipe as recipes
    from dbtk.errors import DbtkError
    from dbtk.io.device import resolve_device

    assert not recipes.valid_device(device)
    with pytest.raises(DbtkError, match=f"unknown device '{device}'"):
        resolve_device(device)


# ------------------------------------------------------------------ run names stay inside the runs folder
@pytest.mark.parametrize("name", ["../../escape", "a/b", "a\\b", "..", ".", "", " "])
def test_a_run_name_cannot_leave_the_runs_folder(synthetic: Path, name: str) -> None:
    run_cli(["recipe", "check", "--no-import", str(synthetic), "--set", f"name={name}"]).assert_clean_error("name", "folder name")


def test_a_run_name_in_the_file_is_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('name = "../escape"\n')
    run_cli(["recipe", "check", "--no-import", str(path)]).assert_clean_error("name", str(path))
    path.write_text('name = "exp-1.v2_b"\n')
    assert run_cli(["recipe", "check", "--no-import", str(path)]).code == 0


# ------------------------------------------------------------------ timm tags are not paths
@pytest.mark.parametrize(
    ("written", "in_file", "with_set"),
    [
        ("resnet18.a1_in1k", "resnet18.a1_in1k", "resnet18.a1_in1k"),  # a tag: stays as written
        ("true", "true", True),  # in the file a string that is no file, left as written; --set reads TOML: true
        ("weights/r18.safetensors", "{folder}/weights/r18.safetensors", "{cwd}/weights/r18.safetensors"),
        ("r18.pth", "{folder}/r18.pth", "{cwd}/r18.pth"),
        ("r18.bin", "{folder}/r18.bin", "{cwd}/r18.bin"),
        # no suffix, but a file by that name exists beside the recipe (not in the current folder)
        ("present", "{folder}/present", "present"),
    ],
)
def test_pretrained_resolves_only_what_names_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str, in_file: str, with_set: str | bool
) -> None:
    from dbtk import recipe as recipes

    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "present").write_bytes(b"")
    path = folder / "r.toml"
    path.write_text(f'[model.encoder]\npretrained = "{written}"\n')
    monkeypatch.chdir(tmp_path)  # elsewhere: a file-relative value must not depend on where the command runs
    assert recipes.load(path).model.encoder.params["pretrained"] == in_file.format(folder=folder)
    from_set = recipes.load(path, [f"model.encoder.pretrained={written}"]).model.encoder.params["pretrained"]
    assert from_set == (with_set.format(cwd=tmp_path) if isinstance(with_set, str) else with_set)


def test_pretrained_booleans_stay_booleans(tmp_path: Path) -> None:
    from dbtk import recipe as recipes

    path = tmp_path / "r.toml"
    for value in (True, False):
        path.write_text(f"[model.encoder]\npretrained = {str(value).lower()}\n")
        assert recipes.load(path).model.encoder.params["pretrained"] is value

