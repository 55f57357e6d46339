"""The sample cache's raw, memory-mapped entries: exact round trips, damaged entries are misses, and a warm cache
serves the very samples a cold one builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dbtk import recipe as recipes
from dbtk.data.dataset import CACHE_MAGIC, CACHE_SUFFIX, DetectionDataset, SampleCache
from dbtk.data.formats import ICDAR2015
from tests.data_fixtures import jpeg_bytes, text_image, write_icdar

ARRAYS = {
    "image": np.arange(7 * 5 * 3, dtype=np.uint8).reshape(7, 5, 3),
    "points": np.array([[0.5, 1.25], [3, 4], [5, 6]], np.float32),
    "lengths": np.array([3], np.int64),
    "ignore": np.array([True]),
    "empty": np.zeros((0, 2), np.float32),
}


def test_round_trip_is_exact_read_only_and_atomic(tmp_path: Path) -> None:
    cache = SampleCache(tmp_path, {"stage": "decoded"})
    cache.put("a", ARRAYS)
    got = cache.get("a")
    assert got is not None and list(got) == list(ARRAYS)
    for name, array in ARRAYS.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array)
        assert not got[name].flags.writeable  # a memory map of the entry, never written through
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [cache.path("a").name] and files[0].suffix == CACHE_SUFFIX  # no temporaries
    assert files[0].read_bytes().startswith(CACHE_MAGIC)
    assert cache.get("b") is None


def test_a_non_contiguous_array_is_stored_as_its_values(tmp_path: Path) -> None:
    cache = SampleCache(tmp_path, {})
    view = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    cache.put("v", {"view": view})
    np.testing.assert_array_equal(cache.get("v")["view"], view)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad header", "short data"])
def test_a_damaged_entry_is_a_miss(tmp_path: Path, damage: str) -> None:
    cache = SampleCache(tmp_path, {})
    cache.put("a", ARRAYS)
    path = cache.path("a")
    data = path.read_bytes()
    header = json.dumps([["image", "|u1", [7, 5, 3], 0], ["more", "<f4", [1000], 128]]).encode()
    path.write_bytes({
        "truncated": data[: len(data) // 2],
        "garbage": b"not an entry at all" * 10,
        "empty": b"",
        "bad header": CACHE_MAGIC + (10).to_bytes(4, "little") + b"{not json}",
        "short data": CACHE_MAGIC + len(header).to_bytes(4, "little") + header + bytes(300),
    }[damage])
    assert cache.get("a") is None


def test_a_folder_that_cannot_take_the_entry_costs_only_the_hit(tmp_path: Path) -> None:
    cache = SampleCache(tmp_path / "c", {})
    (tmp_path / "c").rmdir()
    (tmp_path / "c").write_text("a file where the folder was")  # fails for root too, unlike permissions
    cache.put("a", ARRAYS)  # no error: the sample is served, only not cached
    assert cache.get("a") is None


def _data(**overrides: object) -> recipes.Data:
    text = "[data]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in overrides.items())
    return recipes.loads(text).data


@pytest.mark.parametrize("augment", [True, False])
def test_a_warm_cache_serves_what_a_cold_one_builds(tmp_path: Path, augment: bool) -> None:
    boxes = ((8, 10, 60, 20), (8, 30, 50, 40), (70, 50, 110, 58))
    gt = "8,10,60,10,60,20,8,20,one\n8,30,50,30,50,40,8,40,two\n70,50,110,50,110,58,70,58,###\n"
    root = write_icdar(tmp_path / "d", {f"{i}.jpg": (jpeg_bytes(text_image(128, 96, boxes, seed=i)), gt) for i in range(3)})
    reader = ICDAR2015(recipes.Split(str(root)))
    settings = {"image_size": 64, "augment": augment, "crop": 64 if augment else 0}
    plain = DetectionDataset(reader, _data(**settings, cache="off"), train=True, seed=5)
    cold = DetectionDataset(reader, _data(**settings, cache=str(tmp_path / "cache")), train=True, seed=5)
    warm = DetectionDataset(reader, _data(**settings, cache=str(tmp_path / "cache")), train=True, seed=5)
    for index in range(6):  # two epochs: new augmentations of the same cached pages
        want, first, second = plain[index], cold[index], warm[index]
        for key in ("image", "shrink_map", "shrink_mask", "thresh_map", "thresh_mask"):
            np.testing.assert_array_equal(first[key], want[key], err_msg=key)
            np.testing.assert_array_equal(second[key], want[key], err_msg=key)
    assert len(list((tmp_path / "cache").glob(f"*{CACHE_SUFFIX}"))) == 3
