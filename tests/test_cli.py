"""CLI behaviour shared by every command: version, unknown commands, exit codes, no tracebacks."""

from __future__ import annotations

from dbtk import __version__
from tests.conftest import run_dbtk


def test_version() -> None:
    proc = run_dbtk("--version")
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_unknown_command_suggests() -> None:
    proc = run_dbtk("plugns")
    assert proc.returncode == 2
    assert "no such command 'plugns' (did you mean 'plugins'?)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_command_has_help() -> None:
    from dbtk.cli import COMMANDS

    for name in COMMANDS:
        proc = run_dbtk(name, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "Usage: dbtk" in proc.stdout


def test_profile_imports_budget_fails_when_exceeded() -> None:
    ok = run_dbtk("profile-imports", "recipe", "--json", "--budget", "5")
    assert ok.returncode == 0, ok.stderr
    assert '"over_budget": false' in ok.stdout
    slow = run_dbtk("profile-imports", "recipe", "--budget", "0.000001")
    assert slow.returncode == 1
    assert "over the 1e-06 s import budget: 'dbtk recipe'" in slow.stderr
    assert "Traceback" not in slow.stderr


def test_profile_imports_unknown_command() -> None:
    proc = run_dbtk("profile-imports", "recpie")
    assert proc.returncode == 2
    assert "unknown command 'recpie' (did you mean 'recipe'?)" in proc.stderr
