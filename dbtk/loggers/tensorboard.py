"""``tensorboard`` logger: scalars to ``RUN/tensorboard`` (needs the ``tensorboard`` extra, imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbtk.errors import DbtkError


class TensorboardLogger:
    def __init__(self, run_dir: Path, flush_secs: int = 30) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DbtkError(
                "logger 'tensorboard' needs the tensorboard package",
                hint="pip install 'dbtk[tensorboard]', or remove the [[loggers]] tensorboard entry",
            ) from None
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), flush_secs=flush_secs)

    def start(self, info: dict[str, Any]) -> None:
        self.writer.add_text("recipe", f"```toml\n{info.get('recipe', '')}\n```", global_step=info.get("start_step", 0))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()
