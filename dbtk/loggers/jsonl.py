"""``jsonl`` logger: one JSON object per logged step in ``RUN/metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonlLogger:
    """Appends ``{"step": N, ...metrics}`` lines; a step may have two (training, then validation). On resume,
    lines beyond the resumed step are dropped first so steps stay non-decreasing (they were logged after the
    checkpoint and will be logged again); lines at the resumed step itself are kept."""

    def __init__(self, run_dir: Path, filename: str = "metrics.jsonl") -> None:
        if Path(filename).name != filename or filename in ("", ".", "..", "recipe.toml", "curves.png"):
            from dbtk.errors import DbtkError

            raise DbtkError(f"logger 'jsonl': filename must be a plain file name inside the run folder, not {filename!r}")
        self.path = Path(run_dir) / filename
        self.stream = None

    def start(self, info: dict[str, Any]) -> None:
        start_step = int(info.get("start_step", 0))
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _step(line) <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self.stream = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        assert self.stream is not None, "start() first"
        self.stream.write(json.dumps({"step": step, **metrics}) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a damaged line (e.g. cut by a crash) is dropped
