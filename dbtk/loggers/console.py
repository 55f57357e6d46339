"""``console`` logger: a live progress bar on a terminal; plain lines at a steady interval anywhere else.

Under a batch scheduler, ``nohup`` or ``> log 2>&1`` a live bar shows nothing until the run ends, so when stderr is
not a terminal the logger prints one plain progress line at most every ``interval`` seconds (and the first
one at once), plus every validation result and a final line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class ConsoleLogger:
    def __init__(self, run_dir: Path, show_parts: bool = False, interval: float = 30.0) -> None:
        if not interval > 0:
            from dbtk.errors import DbtkError

            raise DbtkError(f"logger 'console': interval must be a positive number of seconds, got {interval}")
        self.run_dir = run_dir
        self.show_parts = show_parts
        self.interval = interval
        self.console: Any = None
        self.progress: Any = None
        self.task: Any = None
        self.total: int | None = 0  # None until a time budget fixes the step count
        self.started = 0.0
        self.start_step = 0
        self.last_plain = float("-inf")
        self.pending = ""  # the latest plain line not printed yet (printed at close: where the run ended)

    def start(self, info: dict[str, Any]) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.total, self.start_step = info["total_steps"], info.get("start_step", 0)
        self.started = time.perf_counter()
        if not self.console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.total, completed=self.start_step, status="")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.console is None:
            return
        if "planned_steps" in metrics:  # a time budget fixed (or revised) the step count: the trainer says so itself
            self.total = int(metrics["planned_steps"])
            if self.progress is not None:
                self.progress.update(self.task, total=self.total)
            return
        if "val/hmean" in metrics:
            skipped = int(metrics.get("val/skipped_images", 0))
            self.console.print(
                f"step {step}: val hmean [bold]{metrics['val/hmean']:.4f}[/] "
                f"(P {metrics.get('val/precision', 0):.4f}, R {metrics.get('val/recall', 0):.4f})"
                + (f", {skipped} images skipped" if skipped else "")
            )
            return
        status = self._status(metrics)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, status=status)
            return
        self.pending = self._plain(step, status)
        now = time.perf_counter()
        if now - self.last_plain >= self.interval:
            self.last_plain = now
            self.console.print(self.pending, markup=False, soft_wrap=True)
            self.pending = ""

    def _status(self, metrics: dict[str, float]) -> str:
        parts = ""
        if self.show_parts:
            parts = " ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items() if k.startswith("loss/"))
        status = (
            f"loss {metrics.get('loss', float('nan')):.4f} lr {metrics.get('lr', 0):.2e} "
            f"{metrics.get('images_per_second', 0):.1f} img/s {parts}"
        ).rstrip()
        if metrics.get("bad_steps"):
            status += f" bad steps {int(metrics['bad_steps'])}"
        return status

    def _plain(self, step: int, status: str) -> str:
        """``train step 40/1200 (3%) loss ... elapsed 1m05s eta 31m10s``: what a log file needs, no escape codes."""
        elapsed = time.perf_counter() - self.started
        done = step - self.start_step
        if self.total is None:  # a time budget, not planned yet: no count, no estimate
            return f"train step {step} (steps not planned yet) {status} elapsed {_duration(elapsed)}"
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        percent = 100 * step / self.total if self.total else 100.0
        return f"train step {step}/{self.total} ({percent:.0f}%) {status} elapsed {_duration(elapsed)} eta {_duration(eta)}"

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        elif self.console is not None and self.pending:
            self.console.print(self.pending, markup=False, soft_wrap=True)
            self.pending = ""
        self.console = None


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
