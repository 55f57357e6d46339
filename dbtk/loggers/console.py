"""``console`` logger: a rich progress bar with loss, learning rate, speed and ETA, plus validation lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConsoleLogger:
    def __init__(self, run_dir: Path, show_parts: bool = False) -> None:
        self.run_dir = run_dir
        self.show_parts = show_parts
        self.progress = None
        self.task = None

    def start(self, info: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True, highlight=False),
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=info["total_steps"], completed=info.get("start_step", 0), status="")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.progress is None:
            return
        if "val/hmean" in metrics:
            self.progress.console.print(
                f"step {step}: val hmean [bold]{metrics['val/hmean']:.4f}[/] "
                f"(P {metrics.get('val/precision', 0):.4f}, R {metrics.get('val/recall', 0):.4f})"
            )
            return
        parts = ""
        if self.show_parts:
            parts = " ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items() if k.startswith("loss/"))
        status = (
            f"loss {metrics.get('loss', float('nan')):.4f} lr {metrics.get('lr', 0):.2e} "
            f"{metrics.get('images_per_second', 0):.1f} img/s {parts}"
        )
        if metrics.get("bad_steps"):
            status += f" [red]bad steps {int(metrics['bad_steps'])}[/]"
        self.progress.update(self.task, completed=step, status=status)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
