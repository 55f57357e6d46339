"""Random mutations of the shipped recipes: every invalid one is exit 2 with one line naming the key."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbtk import recipe as recipes
from tests.conftest import REPO
from tests.reliability.conftest import TALLY, run_cli

SHIPPED = sorted((REPO / "recipes").glob("*.toml"))
BASES = {path.name: recipes.read_toml(path) for path in SHIPPED}
#: Schema leaves (not component parameters, which belong to the component): "train.lr", "data.crop", ...
LEAVES = [key for key, *_ in recipes.field_docs() if "." in key and not key.startswith(("model.", "loss", "loggers", "data.format"))]
TABLES = sorted({key.rsplit(".", 1)[0] for key in LEAVES})
WRONG_TYPES: list[Any] = ["text", 7, 2.5, True, [1, 2], {"nested": 1}]
EXTREMES: list[Any] = [-1, 0, -1e9, 1e308, 2**62, math.inf, -math.inf, math.nan]


def _set(data: dict, dotted: str, value: Any) -> None:
    *tables, leaf = dotted.split(".")
    for table in tables:
        data = data.setdefault(table, {})
    data[leaf] = value


def _default_type(dotted: str) -> type:
    for key, type_name, default, _ in recipes.field_docs():
        if key == dotted:
            return type(default) if default is not None else type_name
    raise KeyError(dotted)


def _incompatible(value: Any, dotted: str) -> bool:
    expected = _default_type(dotted)
    if expected is float:
        return not isinstance(value, (int, float)) or isinstance(value, bool)
    if expected is int:
        return not isinstance(value, int) or isinstance(value, bool)
    if expected in (bool, str):
        return not isinstance(value, expected)
    return False  # unions (splits, paths): not targeted


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, str, tuple[str, ...]]:
    """(kind, TOML text, fragments the error must contain — empty when the mutation may be valid)."""
    base_name = draw(st.sampled_from(sorted(BASES)))
    data = copy.deepcopy(BASES[base_name])
    kind = draw(st.sampled_from(["wrong_type", "unknown_key", "extreme", "unicode", "drop_table", "duplicate_key", "garbage"]))
    if kind == "wrong_type":
        key = draw(st.sampled_from([k for k in LEAVES if _default_type(k) in (int, float, bool, str)]))
        value = draw(st.sampled_from([v for v in WRONG_TYPES if _incompatible(v, k := key)]))
        _set(data, k, value)
        return kind, recipes._toml_document(data), (key,)
    if kind == "unknown_key":
        table = draw(st.sampled_from(TABLES))
        name = draw(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=3, max_size=12))
        known = {k.rsplit(".", 1)[1] for k in LEAVES if k.startswith(table + ".")}
        name = name if name not in known else name + "_x"
        _set(data, f"{table}.{name}", 1)
        return kind, recipes._toml_document(data), (f"unknown key '{table}.{name}'",)
    if kind == "extreme":
        key = draw(st.sampled_from([k for k in LEAVES if _default_type(k) in (int, float)]))
        _set(data, key, draw(st.sampled_from(EXTREMES)))
        return kind, recipes._toml_document(data), ()
    if kind == "unicode":
        key = draw(st.sampled_from([k for k in LEAVES if _default_type(k) is str] + ["name"]))
        _set(data, key, draw(st.text(max_size=20)))
        return kind, recipes._toml_document(data), ()
    if kind == "drop_table":
        tables = [k for k, v in data.items() if isinstance(v, (dict, list))]
        if tables:
            data.pop(draw(st.sampled_from(tables)))
        return kind, recipes._toml_document(data), ()
    text = recipes._toml_document(data)
    if kind == "duplicate_key":
        return kind, text.replace("[train]\n", "[train]\nlr = 0.1\nlr = 0.2\n", 1) if "[train]\n" in text else text + "\nname = 'a'\nname = 'b'\n", ("invalid TOML",)
    cut = draw(st.integers(0, len(text)))
    junk = draw(st.text(max_size=8))
    return kind, text[:cut] + junk + text[cut + draw(st.integers(0, 5)) :], ()


def fuzz_recipes(tmp_path: Path, examples: int) -> None:
    path = tmp_path / "fuzzed.toml"

    @settings(max_examples=examples, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutation=mutations())
    def check(mutation: tuple[str, str, tuple[str, ...]]) -> None:
        kind, text, fragments = mutation
        path.write_text(text, encoding="utf-8")
        result = run_cli(["recipe", "check", str(path)])
        TALLY[f"recipe mutations ({kind})"] += 1
        assert "Traceback" not in result.stderr, (kind, text, result.stderr)
        if fragments or result.code != 0:
            result.assert_clean_error(*fragments)

    check()


def test_fuzzed_recipes(tmp_path: Path) -> None:
    fuzz_recipes(tmp_path, 200)


@pytest.mark.slow
def test_fuzzed_recipes_many(tmp_path: Path) -> None:
    fuzz_recipes(tmp_path, 3000)


def test_non_utf8_and_binary_recipes(tmp_path: Path) -> None:
    for name, payload in {"latin1.toml": 'name = "caf\xe9"\n'.encode("latin-1"), "binary.toml": bytes(range(256)),
                          "empty.toml": b"", "bom.toml": b"\xef\xbb\xbfname = 'x'\n"}.items():
        path = tmp_path / name
        path.write_bytes(payload)
        result = run_cli(["recipe", "check", str(path)])
        TALLY["recipe files (encodings)"] += 1
        assert "Traceback" not in result.stderr
        if result.code:
            result.assert_clean_error(name)
