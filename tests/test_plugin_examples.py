"""The example plugin packages in plugins/ used from the outside, as a user installs them.

``.ci/run`` (and the README's install line) installs plugins/dbtk-asf and plugins/dbtk-csvlogger in editable mode.
Uninstalling or breaking one is simulated in a child interpreter (its distribution hidden from
``importlib.metadata``, or its import made to fail), so the test environment itself is never modified.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import REPO, run_dbtk

PLUGINS = {"dbtk-asf": ("decoder", "asf"), "dbtk-csvlogger": ("logger", "csv")}


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    for dist in PLUGINS:
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{dist} is not installed: pip install -e plugins/{dist} (the README's install line does it)")


def test_plugins_lists_both_with_their_distribution() -> None:
    result = run_dbtk("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    for dist, (kind, name) in PLUGINS.items():
        assert any(r["group"] == kind and r["name"] == name and r["distribution"] == dist for r in rows), rows


def test_short_train_with_asf_decoder_and_csv_logger(tmp_path: Path) -> None:
    recipe = tmp_path / "asf.toml"
    recipe.write_text(textwrap.dedent(
        """
        name = "asf-tiny"
        [model.decoder]
        name = "asf"
        channels = 16
        [data]
        format = { name = "synthetic", count = 8, val_count = 2, width = 64, height = 64, min_height = 8, max_height = 16 }
        train = "train"
        val = "val"
        image_size = 64
        [train]
        max_steps = 4
        batch_size = 2
        workers = 0
        log_every = 1
        val_every = 0
        val_every_steps = 4
        [eval]
        long_side = 64
        [[loggers]]
        name = "csv"
        every = 2
        """
    ))
    out = tmp_path / "run"
    result = run_dbtk("train", str(recipe), "--out", str(out), "--device", "cpu", timeout=300)
    assert result.returncode == 0, result.stderr
    with (out / "metrics.csv").open(newline="") as stream:
        table = list(csv.reader(stream))
    assert table[0] == ["step", "metric", "value"]
    assert {r[0] for r in table[1:] if r[1] == "loss"} == {"1", "3"}
    assert any(r[1] == "val/hmean" for r in table[1:])
    from dbtk.models.builder import load_model

    model, loaded = load_model(out / "checkpoints" / "best.safetensors")
    assert loaded.model.decoder.name == "asf" and type(model.decoder).__name__ == "ASF"


HIDE_ASF = """
import importlib.metadata as metadata
_real = metadata.distributions
metadata.distributions = lambda **kw: [d for d in _real(**kw) if d.metadata["Name"] != "dbtk-asf"]
"""

BREAK_ASF = """
import sys
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == "dbtk_asf":
            raise ImportError("simulated: dbtk_asf was built for another dbtk")
sys.meta_path.insert(0, Broken())
"""


def run_patched(prelude: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = prelude + f"\nimport sys\nfrom dbtk.cli import main\nsys.argv = ['dbtk', *{list(args)!r}]\nmain()\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**__import__("os").environ, "COLUMNS": "200", "NO_COLOR": "1"})


def test_uninstalled_plugin_leaves_everything_else_working() -> None:
    listing = run_patched(HIDE_ASF, "plugins")
    assert listing.returncode == 0 and "asf" not in listing.stdout and "csv" in listing.stdout
    assert run_patched(HIDE_ASF, "recipe", "check", "recipes/quickstart.toml").returncode == 0
    missing = run_patched(HIDE_ASF, "recipe", "check", "recipes/dbnetpp.toml")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "model.decoder" in missing.stderr and "unknown decoder 'asf'" in missing.stderr


def test_broken_plugin_is_named_and_isolated() -> None:
    check = run_patched(BREAK_ASF, "plugins", "--check")
    assert check.returncode == 0, check.stdout + check.stderr  # a report, not a failure: the others still work
    asf_line = next(line for line in check.stdout.splitlines() if "dbtk-asf" in line)
    assert "broken: ImportError: simulated" in asf_line
    assert all(" ok " in line for line in check.stdout.splitlines() if "dbtk 0.1" in line or "dbtk-csvlogger" in line)
    assert run_patched(BREAK_ASF, "recipe", "check", "recipes/quickstart.toml").returncode == 0
    failing = run_patched(BREAK_ASF, "recipe", "check", "recipes/dbnetpp.toml")
    assert failing.returncode == 2 and "dbtk-asf" in failing.stderr and "Traceback" not in failing.stderr
