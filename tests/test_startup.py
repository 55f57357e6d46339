"""The start-up rule: help, version and completion paths never import heavy libraries (or rich)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dbtk.cli import COMMANDS
from dbtk.cli.profile_imports import HEAVY_MODULES, parse_importtime

HELP_PATHS = [[], *([name] for name in sorted(COMMANDS)), ["recipe", "check"], ["recipe", "keys"]]


def imported_modules(args: list[str], env: dict[str, str] | None = None) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dbtk", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {name.partition(".")[0] for name, _, _ in parse_importtime(proc.stderr).modules}


@pytest.mark.parametrize("args", HELP_PATHS, ids=lambda a: " ".join(a) or "dbtk")
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    modules = imported_modules([*args, "--help"])
    assert "dbtk" in modules  # the parser really saw the imports
    forbidden = sorted(modules & {*HEAVY_MODULES, "rich"})
    assert not forbidden, f"'dbtk {' '.join(args)} --help' imported {forbidden}"


def test_version_and_completion_are_light() -> None:
    assert not imported_modules(["--version"]) & set(HEAVY_MODULES)
    completion_env = {"_DBTK_COMPLETE": "bash_complete", "COMP_WORDS": "dbtk pl", "COMP_CWORD": "1"}
    assert not imported_modules([], env=completion_env) & {*HEAVY_MODULES, "rich"}


def test_completion_lists_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dbtk"],
        capture_output=True,
        text=True,
        env={**os.environ, "_DBTK_COMPLETE": "bash_complete", "COMP_WORDS": "dbtk pro", "COMP_CWORD": "1"},
        timeout=60,
    )
    assert proc.returncode == 0
    assert "profile-imports" in proc.stdout


def test_parse_importtime_totals_outermost_imports() -> None:
    stderr = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       100 |        100 |   a.b\n"
        "import time:        50 |        150 | a\n"
        "import time:        30 |         30 | c\n"
    )
    profile = parse_importtime(stderr)
    assert profile.total_us == 180
    assert [m[0] for m in profile.modules] == ["a.b", "a", "c"]
