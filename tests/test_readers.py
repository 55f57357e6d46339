"""Every reader dbtk ships meets the one reader contract and works with every command that takes ``--format``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dbtk.data.reader import FileReader
from dbtk.recipe import Split
from dbtk.registry import registry
from dbtk.testing import PluginContractError, check_reader
from tests.conftest import run_dbtk
from tests.data_fixtures import GOOD_LINE, jpeg_bytes, text_image, write_icdar
from tests.external_fixtures import fixture


def icdar_split(root: Path) -> tuple[list[str], Split]:
    image = jpeg_bytes(text_image())
    write_icdar(root, {"a.jpg": (image, GOOD_LINE + "\n"), "b.jpg": (image, GOOD_LINE + "\n8,30,30,30,30,40,8,40,###\n")})
    return [str(root)], Split(str(root))


def receipt_split(root: Path) -> tuple[list[str], Split]:
    (root / "images").mkdir(parents=True)
    words = {"0001": {"points": [[8, 10], [40, 10], [40, 20], [8, 20]]}, "0002": {"points": [[8, 30], [30, 30], [30, 40], [8, 40]], "transcription": "###"}}
    for name in ("a.jpg", "b.jpg"):
        (root / "images" / name).write_bytes(jpeg_bytes(text_image()))
    (root / "labels.json").write_text(json.dumps({"images": {"a.jpg": {"words": words}, "b.jpg": {"words": words}}}))
    return [str(root / "images"), "--annotations", str(root / "labels.json")], Split(str(root / "images"), str(root / "labels.json"))


def synthetic_split(root: Path) -> tuple[list[str], Split]:
    root.mkdir(parents=True)  # the synthetic reader takes the split's name; a folder name works as any other
    return [str(root)], Split(str(root))


#: One fixture per shipped reader. A reader added to pyproject.toml without a fixture here fails the test below.
FIXTURES: dict[str, Callable[[Path], tuple[list[str], Split]]] = {
    "icdar2015": icdar_split,
    "receipt-json": receipt_split,
    "synthetic": synthetic_split,
    **{name: fixture(name) for name in ("coco", "ctw1500", "doctr", "label-studio", "labelme", "ppocr", "totaltext")},
}
SHIPPED = sorted(e.name for e in registry.entries("dataset") if e.dist == "dbtk")
PARAMS = {"synthetic": {"count": 3, "width": 96, "height": 64, "max_lines": 2}}


def test_every_shipped_reader_has_a_fixture() -> None:
    assert SHIPPED == sorted(FIXTURES)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_reader_meets_the_contract(name: str, tmp_path: Path) -> None:
    _, split = FIXTURES[name](tmp_path / "set")
    check_reader(registry.load("dataset", name), split, **PARAMS.get(name, {}))


@pytest.mark.parametrize("name", SHIPPED)
def test_clean_data_and_eval_pred_work_with_every_reader(name: str, tmp_path: Path) -> None:
    args, split = FIXTURES[name](tmp_path / "set")
    check = run_dbtk("clean-data", *args, "--format", name, "--check", "--workers", "1")
    assert check.returncode in (0, 1) and "Traceback" not in check.stderr, check.stderr
    copy = run_dbtk("clean-data", *args, "--format", name, "--out", str(tmp_path / "copy"), "--workers", "1")
    assert copy.returncode == 0, copy.stderr

    # Predictions in predict's JSON layout, made from the labels themselves: eval --pred scores them all.
    reader = registry.build("dataset", {"name": name}, split=split)
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for index in range(len(reader)):
        sample = reader.load(index)
        points = [a.points.tolist() for a in sample.annotations if not a.ignore]
        detections = {"image": sample.name, "detections": [{"points": p, "score": 1.0} for p in points]}
        (predictions / f"{Path(sample.name).stem}.json").write_text(json.dumps(detections))
    scored = run_dbtk("eval", "--pred", str(predictions), "--data", *args, "--format", name, "--json")
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["images"] == len(reader) and result["hmean"] > 0.99  # labels clipped to the image may differ a little


def test_eval_pred_on_an_empty_prediction_folder_is_an_error(tmp_path: Path) -> None:
    args, _ = icdar_split(tmp_path / "set")
    (tmp_path / "pred").mkdir()
    scored = run_dbtk("eval", "--pred", str(tmp_path / "pred"), "--data", *args)
    assert scored.returncode == 2
    assert scored.stderr.count("error:") == 1 and "holds no predictions" in scored.stderr


class _NoIdentity(FileReader):
    def __init__(self, split: Split) -> None:
        super().__init__()
        self.inner = registry.build("dataset", {"name": "icdar2015"}, split=split)
        self.records = self.inner.records

    def identity(self, index: int) -> str:
        return "same"


class _FloatImages(FileReader):
    def __init__(self, split: Split) -> None:
        super().__init__(exif="stored")
        self.records = registry.build("dataset", {"name": "icdar2015"}, split=split).records

    def load(self, index: int):  # noqa: ANN201
        sample = super().load(index)
        sample.decoded = dataclasses.replace(sample.decoded, image=sample.decoded.image.astype(np.float32))
        return sample


class _LyingReduction(FileReader):
    """Says its pixels are a reduced page when they are the full one."""

    def __init__(self, split: Split) -> None:
        super().__init__(exif="stored")
        self.records = registry.build("dataset", {"name": "icdar2015"}, split=split).records

    def load(self, index: int, draw=None):  # noqa: ANN001, ANN201
        sample = super().load(index)
        if draw is not None:
            sample.decoded = dataclasses.replace(sample.decoded, reduction=2)
        return sample


class _BadExif(FileReader):
    def __init__(self, split: Split) -> None:
        super().__init__(exif="rotated")
        self.records = registry.build("dataset", {"name": "icdar2015"}, split=split).records


@pytest.mark.parametrize(
    ("factory", "rule"),
    [(_NoIdentity, "identity"), (_FloatImages, "uint8"), (_BadExif, "exif"), (_LyingReduction, "reduction")],
)
def test_check_reader_names_the_broken_rule(factory: type, rule: str, tmp_path: Path) -> None:
    _, split = icdar_split(tmp_path / "set")
    with pytest.raises(PluginContractError, match=rule):
        check_reader(factory, split)


def test_icdar_label_file_without_image_is_reported(tmp_path: Path) -> None:
    _, split = icdar_split(tmp_path / "set")
    (tmp_path / "set" / "gts" / "gt_gone.txt").write_text(GOOD_LINE + "\n")
    reader = registry.build("dataset", {"name": "icdar2015"}, split=split)
    assert [(Path(p.file).name, p.reason) for p in reader.problems] == [("gt_gone.txt", "missing_image")]
    assert len(reader) == 2


@pytest.mark.parametrize("name", SHIPPED)
def test_training_with_validation_works_with_every_reader(name: str, tmp_path: Path) -> None:
    from dbtk import recipe as recipes
    from dbtk.engine.trainer import Trainer
    from tests.test_train import tiny

    _, split = FIXTURES[name](tmp_path / "set")
    table = {"images": split.images, **({"annotations": split.annotations} if split.annotations else {})}
    data = recipes.unstructure(tiny())
    data["data"].update(format={"name": name, **PARAMS.get(name, {})}, train=table, val=table, cache="off")
    data["train"].update(max_steps=2, checkpoint_every=0)
    trainer = Trainer(recipes.structure(data, source="test"), tmp_path / "run")
    trainer.run()
    validations = [h for h in trainer.state.history if "val/hmean" in h]
    assert trainer.state.position.step == 2 and validations and validations[-1]["val/images"] == len(trainer.val_reader)


def test_identity_follows_an_edited_image_after_the_first_call(tmp_path: Path) -> None:
    """The identity (the cache key) keeps a record's label hash between calls but looks at the file every time."""
    import os

    from dbtk.data.formats import open_split

    _, split = icdar_split(tmp_path)
    reader = open_split(split.images)
    first, other = reader.identity(0), reader.identity(1)
    assert reader.identity(0) == first and first != other
    image = reader.records[0].image_path
    image.write_bytes(image.read_bytes() + b"\0")  # another size
    assert reader.identity(0) != first
    edited = reader.identity(0)
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the same size, touched
    assert reader.identity(0) != edited
