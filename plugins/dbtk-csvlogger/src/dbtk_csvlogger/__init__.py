"""``csv`` logger for dbtk: metrics as ``step,metric,value`` rows in ``RUN/metrics.csv``.

Standard library only, so it costs nothing at start-up and cannot pull torch into a command.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

__all__ = ["CsvLogger"]
__version__ = "0.1.0"

DBTK_API_VERSIONS = (1, 1)
HEADER = ["step", "metric", "value"]


class CsvLogger:
    """Append one row per (step, metric). ``every`` thins training rows; validation rows (``val/…``) are all kept."""

    def __init__(self, run_dir: Path, filename: str = "metrics.csv", every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if Path(filename).name != filename:
            raise ValueError(f"filename must be a plain file name inside the run folder, got '{filename}'")
        self.path = Path(run_dir) / filename
        self.every = every
        self.stream = None
        self.writer = None
        self.logged = 0

    def start(self, info: dict[str, Any]) -> None:
        """Open for appending; on resume first drop rows logged after the checkpoint (they will be logged again)."""
        start_step = int(info.get("start_step", 0))
        if self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as stream:
                rows = [row for row in csv.reader(stream) if row != HEADER and _step(row) <= start_step]
            self._rewrite(rows)
        else:
            self._rewrite([])
        self.stream = self.path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.stream)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        assert self.writer is not None and self.stream is not None, "start() first"
        validation = any(name.startswith("val/") for name in metrics)
        self.logged += not validation
        if not validation and (self.logged - 1) % self.every:
            return
        for name, value in metrics.items():
            self.writer.writerow([step, name, _format(value)])
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = self.writer = None

    def _rewrite(self, rows: list[list[str]]) -> None:
        with self.path.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(HEADER)
            writer.writerows(rows)


def _format(value: float) -> str:
    value = float(value)
    return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))


def _step(row: list[str]) -> int:
    try:
        return int(row[0])
    except (IndexError, ValueError):
        return 1 << 62  # a damaged row (e.g. cut by a crash) is dropped
