"""Terminal output for commands. Rich is imported here, on first print, never at CLI start-up."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


#: Width of output that is not a terminal (a file, a pipe, a batch log): wide enough that no table is cut.
UNLIMITED_WIDTH = 100_000

#: Seconds between the plain progress lines written when stderr is not a terminal.
PROGRESS_INTERVAL = 10.0


@functools.cache
def console() -> Console:
    """stdout. A terminal gets its own width; a file or pipe gets whole lines (tables are never cut to 80)."""
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal:
        out.width = UNLIMITED_WIDTH
    return out


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
def progress(label: str, total: int, interval: float = PROGRESS_INTERVAL) -> Iterator[Callable[[], None]]:
    """Progress on stderr; yields the function that advances it by one.

    A terminal gets a transient bar. Anything else (a batch scheduler's log, ``2> log``) gets a plain line every
    ``interval`` seconds and one at the end, e.g. ``evaluating: 12/40 (30%), 4.1 s elapsed``, so a log shows life.
    """
    if err_console().is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console(), transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda: bar.advance(task)
        return
    start = last = time.monotonic()
    done = reported = 0

    def line() -> None:
        nonlocal last, reported
        last, reported = time.monotonic(), done
        percent = f" ({100 * done // total}%)" if total else ""
        sys.stderr.write(f"{label}: {done}/{total}{percent}, {last - start:.1f} s elapsed\n")
        sys.stderr.flush()

    def advance() -> None:
        nonlocal done
        done += 1
        if time.monotonic() - last >= interval:
            line()

    yield advance
    if done != reported:
        line()


def data_report(report: Any) -> None:
    """The problems table of ``clean-data`` and ``convert`` (a :class:`dbtk.data.clean.Report`): every category
    with its count and up to three ``file:line`` examples."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{report.source}: {report.images} images, {report.polygons_kept} polygons kept", title_justify="left")
    table.add_column("problem")
    table.add_column("count", justify="right")
    table.add_column("examples")
    for category, count in sorted(report.counts.items(), key=lambda kv: -kv[1]):
        table.add_row(category, str(count), escape("\n".join(report.examples[category][:3])))
    if not report.counts:
        table.add_row("[green]none[/]", "0", "")
    console().print(table)
