"""dbtk-csvlogger's own tests: the logger contract through dbtk's plugin kit, then the file it writes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from dbtk.testing import check_logger
from dbtk_csvlogger import CsvLogger


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as stream:
        return list(csv.reader(stream))


def test_contract_and_resume(tmp_path: Path) -> None:
    check_logger(CsvLogger, tmp_path)
    table = rows(tmp_path / "metrics.csv")
    assert table[0] == ["step", "metric", "value"]
    steps = [int(r[0]) for r in table[1:]]
    assert steps == sorted(steps) and max(steps) == 6  # the resumed run (start_step 3) replaced steps 4 and 5
    assert ["3", "loss", repr(1 / 3)] in table and not any(r[1] == "loss" and r[2] == "nan" for r in table)


def test_thinning_keeps_validation(tmp_path: Path) -> None:
    logger = CsvLogger(tmp_path, filename="m.csv", every=2)
    logger.start({"start_step": 0})
    for step in range(1, 6):
        logger.log(step, {"loss": float(step)})
    logger.log(5, {"val/hmean": 0.9})
    logger.log(6, {"loss": 6.0})  # the 6th training row: thinned out
    logger.log(7, {"loss": float("nan")})  # a skipped step's NaN is written as such
    logger.close()
    table = rows(tmp_path / "m.csv")[1:]
    assert [r[0] for r in table if r[1] == "loss"] == ["1", "3", "5", "7"]
    assert ["5", "val/hmean", "0.9"] in table
    assert math.isnan(float(table[-1][2]))


def test_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every"):
        CsvLogger(tmp_path, every=0)
    with pytest.raises(ValueError, match="plain file name"):
        CsvLogger(tmp_path, filename="../outside.csv")


def test_registered_under_dbtk_loggers() -> None:
    from dbtk.registry import registry

    assert registry.resolve("logger", "csv").dist == "dbtk-csvlogger"
