"""Terminal output for commands. Rich is imported here, on first print, never at CLI start-up."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@functools.cache
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


@functools.cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def error(message: str, hint: str | None = None) -> None:
    """One red line, plus a dim hint line: the only output of a user error."""
    from rich.markup import escape

    err_console().print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    if hint:
        err_console().print(f"[dim]hint: {escape(hint)}[/]", soft_wrap=True)


def warn(message: str) -> None:
    from rich.markup import escape

    err_console().print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def step(message: str) -> None:
    """A progress line on stderr; commands print one before importing torch so the user sees life at once."""
    from rich.markup import escape

    err_console().print(f"[cyan]•[/] {escape(message)}", soft_wrap=True)


def loading_message(model_path: str) -> str:
    """The first line of a command that loads a model: says which runtime it is about to import."""
    runtime = "onnxruntime" if model_path.lower().endswith(".onnx") else "imports torch"
    return f"loading {model_path} ({runtime})..."


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextlib.contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[], None]]:
    """A transient progress bar on stderr; yields the function that advances it by one."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
