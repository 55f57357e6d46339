"""CLI behaviour shared by every command: version, unknown commands, exit codes, one-line errors, interrupts, logs."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dbtk import __version__
from dbtk.cli._oserror import file_error
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


# ------------------------------------------------------------------------------------------------ one boundary
def _labelled_folder(root: Path) -> Path:
    from tests.data_fixtures import jpeg_bytes, text_image, write_icdar

    return write_icdar(root, {"page.jpg": (jpeg_bytes(text_image()), "8,10,40,10,40,20,8,20,hi\n")})


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error:", "hint:"))]


def test_os_error_on_an_output_is_one_line_naming_path_and_operation(tmp_path: Path) -> None:
    data = _labelled_folder(tmp_path / "data")
    (tmp_path / "afile").write_text("x")
    report = tmp_path / "afile" / "report.json"  # its parent is a file: ENOTDIR, for root too
    proc = run_dbtk("clean-data", str(data), "--check", "--report", str(report))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert _error_lines(proc.stderr) == [f"error: cannot write {report}: Not a directory", f"hint: a part of {report} is a file, not a folder"]
    debug = run_dbtk("--debug", "clean-data", str(data), "--check", "--report", str(report))
    assert "Traceback" in debug.stderr and "NotADirectoryError" in debug.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_names_the_file_and_hints(tmp_path: Path) -> None:
    proc = run_dbtk("clean-data", str(_labelled_folder(tmp_path / "data")), "--check", "--report", "/dev/full")
    assert proc.returncode == 2
    assert _error_lines(proc.stderr) == [
        "error: cannot write /dev/full: No space left on device",
        "hint: the disk is full: free space on the disk holding /dev/full, or write somewhere else",
    ]


def _raise_inside(function: Callable[[], object]) -> OSError:
    try:
        function()
    except OSError as exc:
        return exc
    raise AssertionError("no OSError")


def test_file_error_reads_the_operation_from_the_failing_call(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")

    def write_json() -> None:
        with open(afile / "x.json", "w") as stream:  # built-in open: the caller's name says what it was doing
            stream.write("{}")

    cases = {
        lambda: (afile / "sub").mkdir(parents=True): f"cannot create the folder {afile / 'sub'}: Not a directory",
        lambda: (afile / "x.txt").read_text(): f"cannot read {afile / 'x.txt'}: Not a directory",
        lambda: (afile / "x.txt").write_bytes(b""): f"cannot write {afile / 'x.txt'}: Not a directory",
        lambda: list(afile.iterdir()): f"cannot list the folder {afile}: Not a directory",
        lambda: os.replace(tmp_path / "gone", tmp_path / "new"): f"cannot move {tmp_path / 'gone'} to {tmp_path / 'new'}: No such file or directory",
        lambda: tempfile.mkstemp(dir=afile): f"cannot create a file in {afile}: Not a directory",
        write_json: f"cannot write {afile / 'x.json'}: Not a directory",
    }
    for function, message in cases.items():
        assert file_error(_raise_inside(function)).message == message
    full = file_error(OSError(errno.ENOSPC, "No space left on device"))
    assert full.message == "cannot open: No space left on device" and "disk is full" in (full.hint or "")


def test_usage_errors_are_one_line_with_a_hint() -> None:
    proc = run_dbtk("predict", "--batch-size", "-3", "model.safetensors", "page.jpg")
    assert proc.returncode == 2
    assert _error_lines(proc.stderr) == [
        "error: invalid value for '--batch-size': -3 is not in the range 1<=x<=1024.",
        "hint: see 'dbtk predict --help'",
    ]
    assert "Usage:" not in proc.stderr


def test_float_options_refuse_non_finite_numbers() -> None:
    proc = run_dbtk("plugins", "--timeout", "nan")
    assert proc.returncode == 2
    assert _error_lines(proc.stderr)[0] == "error: invalid value for '--timeout': 'nan' is not a finite number."


def test_opset_range_is_what_the_installed_exporter_writes() -> None:
    from torch.onnx import _constants

    from dbtk.cli.export import OPSETS

    assert OPSETS[1] == _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    assert OPSETS[0] >= _constants.ONNX_MIN_OPSET


def test_ctrl_c_during_start_up_exits_130_with_one_line(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"not read: the interrupt comes while torch is being imported")
    env = {**os.environ, "NO_COLOR": "1"}
    command = [sys.executable, "-m", "dbtk", "predict", str(model), str(model), "--out", str(tmp_path / "out")]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "• loading ... (imports torch)...": printed just before the import
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
    assert "imports torch" in first
    assert proc.returncode == 130
    assert _error_lines(rest) == ["error: interrupted"] and "Traceback" not in rest


# ------------------------------------------------------------------------------------------------ nothing to do
def test_a_split_with_nothing_to_check_or_score_is_refused(tmp_path: Path) -> None:
    labels_only = _labelled_folder(tmp_path / "data")
    (labels_only / "images" / "page.jpg").unlink()
    check = run_dbtk("clean-data", str(labels_only), "--check")
    assert check.returncode == 2
    assert _error_lines(check.stderr)[0] == f"error: nothing to check: no labelled images in {labels_only}"
    scored = run_dbtk("eval", "--pred", str(labels_only / "gts"), "--data", str(labels_only))
    assert scored.returncode == 2
    assert _error_lines(scored.stderr)[0] == f"error: nothing to score: no labelled images in {labels_only}"


# ------------------------------------------------------------------------------------------------ logs off a terminal
def test_progress_off_a_terminal_prints_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from dbtk.cli import _ui

    with _ui.progress("evaluating", 4, interval=0) as advance:
        for _ in range(4):
            advance()
    steady = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in steady] == ["evaluating: 1/4 (25%)", "evaluating: 2/4 (50%)", "evaluating: 3/4 (75%)", "evaluating: 4/4 (100%)"]
    assert all(line.endswith(" s elapsed") for line in steady)
    with _ui.progress("scanning", 3) as advance:  # the default interval: only the line at the end
        for _ in range(3):
            advance()
    assert [line.split(",")[0] for line in capsys.readouterr().err.splitlines()] == ["scanning: 3/3 (100%)"]


def test_eval_json_keeps_stdout_pure_and_shows_progress_on_stderr(tmp_path: Path) -> None:
    data = _labelled_folder(tmp_path / "data")
    proc = run_dbtk("eval", "--pred", str(data / "gts"), "--data", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hmean"] == 1.0
    assert "scoring: 1/1 (100%)" in proc.stderr


def test_tables_off_a_terminal_are_not_cut() -> None:
    proc = run_dbtk("plugins", env={"COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    assert max(map(len, proc.stdout.splitlines())) > 80
    assert "dbtk.data.formats:ICDAR2015" in proc.stdout
