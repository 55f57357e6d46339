"""The console logger shows progress when stderr is not a terminal (batch schedulers, ``> log 2>&1``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dbtk.loggers.console import ConsoleLogger
from dbtk.testing import check_logger


def test_meets_the_logger_contract(tmp_path: Path) -> None:
    check_logger(ConsoleLogger, tmp_path, interval=0.01)


def test_plain_lines_at_a_steady_interval_when_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = ConsoleLogger(tmp_path, interval=0.05)
    logger.start({"total_steps": 100, "start_step": 0})
    logger.log(1, {"planned_steps": 20, "elapsed_seconds": 0.0})  # the budget's plan shrinks the run to 20 steps
    for step in range(1, 21):
        logger.log(step, {"loss": 0.25, "lr": 1e-3, "images_per_second": 4.0})
        time.sleep(0.01)
    logger.log(20, {"planned_steps": 20, "elapsed_seconds": 0.2})  # a time budget's plan: no line of its own
    logger.log(20, {"val/hmean": 0.75, "val/precision": 0.8, "val/recall": 0.7, "val/skipped_images": 1})
    logger.close()
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if line.startswith("train step")]
    assert progress[0].startswith("train step 1/20 (5%) loss 0.2500")  # the first line at once
    assert 2 <= len(progress) <= 12  # throttled: ~every 50 ms over ~200 ms, not one per step
    assert progress[-1].startswith("train step 20/20 (100%)")  # where the run ended, always
    assert "step 20: val hmean 0.7500 (P 0.8000, R 0.7000), 1 images skipped" in lines
    assert not any("\x1b[" in line for line in lines)  # no escape codes in a log file


def test_a_time_budget_not_yet_planned_has_no_count_and_no_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = ConsoleLogger(tmp_path, interval=1e-6)
    logger.start({"total_steps": None, "start_step": 0})  # train.time_budget: the count comes after the warm-up
    logger.log(4, {"loss": 0.25, "lr": 1e-3, "images_per_second": 4.0})
    logger.log(8, {"planned_steps": 40, "elapsed_seconds": 1.0})
    logger.log(8, {"loss": 0.25, "lr": 1e-3, "images_per_second": 4.0})
    logger.close()
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train step")]
    assert progress[0].startswith("train step 4 (steps not planned yet) loss 0.2500") and "eta" not in progress[0]
    assert progress[-1].startswith("train step 8/40 (20%)")


def test_interval_must_be_positive(tmp_path: Path) -> None:
    from dbtk.errors import DbtkError

    with pytest.raises(DbtkError, match="interval"):
        ConsoleLogger(tmp_path, interval=0)
