"""Every slot of the recipe schema with the wrong kind of TOML value: generated from the schema, not listed.

A scalar where a table (or an array of tables) belongs, a table where a scalar belongs: each must be one
``error:`` line naming the key path, the kind expected and the kind found, exit 2, never a traceback (``train =
5`` once said "argument of type 'int' is not iterable"). A key added to the schema enters the table by itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from dbtk import recipe as recipes
from tests.reliability.conftest import TALLY, run_cli

#: What each wrong value is called in the error ("got integer 5").
KINDS = {int: "integer", str: "string", dict: "table"}


def slots() -> list[tuple[tuple[str, ...], Any]]:
    """(key path, wrong value) for every slot: tables and arrays get a number and a string, components and
    splits (which take a name or a folder as a string) a number, every other key a table."""
    cases: list[tuple[tuple[str, ...], Any]] = []

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        for field in attrs.fields(cls):
            key = (*prefix, field.name)
            if recipes._is_table(field.type):
                cases.extend([(key, 5), (key, "text")])
                walk(field.type, key)
            elif field.type == list[recipes.Component]:
                cases.extend([(key, 5), (key, "text"), (key, {"name": "jsonl"})])
            elif field.type is recipes.Component:
                cases.append((key, 5))
            elif field.type == recipes.Split | None:
                cases.append((key, 5))
                cases.extend(((*key, inner.name), {"x": 1}) for inner in attrs.fields(recipes.Split))
            else:
                cases.append((key, {"x": 1}))

    walk(recipes.Recipe, ())
    return cases


def nested(key: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A recipe document holding ``value`` at ``key`` (a split's inner key gets a valid ``images`` beside it)."""
    document: dict[str, Any] = {}
    node = document
    for depth, part in enumerate(key[:-1]):
        split = key[:depth] == ("data",) and part in ("train", "val")
        node = node.setdefault(part, {"images": "folder"} if split else {})
    node[key[-1]] = value
    return document


SLOTS = slots()


def test_the_schema_has_slots_of_every_kind() -> None:
    keys = {".".join(key) for key, _ in SLOTS}
    assert {"train", "loggers", "model.encoder", "data.train.images", "train.lr", "name"} <= keys
    assert len(SLOTS) >= 70


@pytest.mark.parametrize(("key", "value"), SLOTS, ids=[f"{'.'.join(k)}={type(v).__name__}" for k, v in SLOTS])
def test_wrong_kind_of_value_names_key_expected_and_found(tmp_path: Path, key: tuple[str, ...], value: Any) -> None:
    path = tmp_path / "r.toml"
    path.write_text(recipes._toml_document(nested(key, value)))
    result = run_cli(["recipe", "check", "--no-import", str(path)])
    TALLY["recipe slots with a wrong kind of value"] += 1
    result.assert_clean_error(".".join(key), "expected", f"got {KINDS[type(value)]}")
