"""The ``dbtk`` command line: a lazy click group.

Command modules are imported only when their command runs (or when ``--help`` lists them), following click's
LazyGroup pattern, so ``dbtk --help`` never pays for torch. :func:`main` is the one boundary where failures become
one red ``error:`` line plus an optional ``hint:``: errors the user can fix (:class:`DbtkError`), usage errors,
every ``OSError`` on a file (exit code 2), Ctrl-C (exit code 130) and SIGTERM, made a KeyboardInterrupt
too (exit code 143); ``--debug`` (or ``DBTK_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from dbtk import __version__
from dbtk.errors import DbtkError, Interrupted

if TYPE_CHECKING:
    from pathlib import Path

    from dbtk.data.reader import Reader

#: Command name -> "module:attribute". One module per command; nothing here is imported until needed.
COMMANDS: dict[str, str] = {
    "clean-data": "dbtk.cli.clean_data:clean_data",
    "convert": "dbtk.cli.convert:convert",
    "doctor": "dbtk.cli.doctor:doctor",
    "eval": "dbtk.cli.eval:eval_command",
    "export": "dbtk.cli.export:export",
    "models": "dbtk.cli.models:models",
    "plugins": "dbtk.cli.plugins:plugins",
    "predict": "dbtk.cli.predict:predict",
    "profile-imports": "dbtk.cli.profile_imports:profile_imports",
    "recipe": "dbtk.cli.recipe:recipe",
    "serve": "dbtk.cli.serve:serve",
    "train": "dbtk.cli.train:train",
    "weights": "dbtk.cli.weights:weights",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            module_name, _, attr = self.lazy_commands[cmd_name].partition(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            from dbtk.errors import did_you_mean

            if args and args[0] not in self.list_commands(ctx):
                raise click.UsageError(
                    f"no such command '{args[0]}'{did_you_mean(args[0], self.list_commands(ctx))}", ctx
                ) from exc
            raise


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="dbtk")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
def cli(debug: bool) -> None:
    """Train, evaluate and ship DBNet text detectors.

    Start with 'dbtk train recipes/quickstart.toml' (CPU, a few minutes, no download).
    """


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``±inf``: nan compares false with both bounds and would
    pass a plain range. Every float option of every command uses it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class ExistingPath(click.Path):
    """``click.Path(exists=True)`` whose "does not exist" names the absolute path tried: a relative path says
    nothing of the folder it was relative to."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(exists=True, **kwargs)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not os.path.lexists(os.path.expanduser(value)):
            self.fail(f"{os.path.abspath(os.path.expanduser(value))} does not exist.", param, ctx)
        return super().convert(value, param, ctx)


def require_samples(reader: Reader, split: str, action: str) -> None:
    """Refuse a split that yields nothing to ``action`` (exit 2, with what reading it found) instead of reporting
    on zero images as if all were well."""
    if len(reader):
        return
    if reader.problems:
        first = reader.problems[0]
        hint = f"reading it found {len(reader.problems)} problem(s), e.g. {first.where()}: {first.detail}"
    else:
        from dbtk.data.formats import ICDAR2015

        hint = ("an icdar2015 split is DIR/images/NAME.jpg with DIR/gts/gt_NAME.txt; receipt JSON needs --annotations FILE"
                if isinstance(reader, ICDAR2015) else "docs/data.md shows the files each format's reader expects")
    raise DbtkError(f"nothing to {action}: no labelled images in {split}", hint=hint)


def require_apart(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Refuse an output that is, contains or lies inside an input (``--report`` onto a label file, ``--vis`` into the
    image folder, ``--out`` inside SRC): commands that read a dataset never change it."""
    from pathlib import Path

    for out_name, out in outputs.items():
        for in_name, source in inputs.items():
            if out is None or source is None:
                continue
            target, origin = Path(out).resolve(), Path(source).resolve()
            if _inside(target, origin) or _inside(origin, target):
                raise DbtkError(f"{out_name} {target} overlaps {in_name} {origin}: dbtk never modifies its input",
                                hint=f"choose a {out_name} outside {origin}")


def _inside(path: Path, folder: Path) -> bool:
    """Whether resolved ``path`` is ``folder`` or lies below it."""
    return path == folder or folder in path.parents


def require_report_outside(report: str | None, out: str | None) -> None:
    """A ``--report`` file inside the ``--out`` copy would overwrite a label file the copy needs, or become one (a
    JSON file in a LabelMe or COCO folder): the copy holds the dataset and nothing else."""
    from pathlib import Path

    if report is None or out is None:
        return
    target, folder = Path(report).resolve(), Path(out).resolve()
    if _inside(target, folder):
        raise DbtkError(f"--report {target} lies inside --out {folder}: the copy holds the dataset and nothing else",
                        hint=f"write the report outside {folder}, e.g. --report {folder.parent / (folder.name + '-report.json')}")


def main(args: Sequence[str] | None = None, prog_name: str = "dbtk") -> None:
    """Console-script entry point: runs the CLI and turns every failure it can explain into one-line messages."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("DBTK_DEBUG") == "1"
    previous = _stop_on_sigterm()
    try:
        cli.main(argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `dbtk plugins | head`
        sys.stderr.close()
        sys.exit(0)
    except click.ClickException as exc:  # a usage error: its message says all, --debug or not
        _report(exc)
    except (DbtkError, OSError, click.Abort, KeyboardInterrupt, MemoryError) as exc:
        if debug:
            raise
        _report(exc)
    except RuntimeError as exc:  # torch's allocators raise RuntimeError subclasses when memory runs out
        if debug or not _out_of_memory(exc):
            raise
        _report(MemoryError(str(exc)))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm() -> Any:
    """Make SIGTERM (``kill``, ``docker stop``, a batch scheduler ending a job) a KeyboardInterrupt, as Ctrl-C is, so
    every command ends through the same path: ``train`` saves its checkpoint, the rest clean up, and the exit
    code is 143. Returns the handler to restore; None when there is none to replace (a handler someone else
    installed, or not the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None

    def terminate(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    return signal.signal(signal.SIGTERM, terminate)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


#: Raised by click >= 8.2 for a group called without a command; its message is the help text.
_HELP_ERROR: type[click.ClickException] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _report(exc: BaseException) -> NoReturn:
    """Print one ``error:`` line (and a ``hint:``) for a failure and exit with its code."""
    from dbtk.cli import _ui

    if isinstance(exc, MemoryError):
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        exc = DbtkError(f"out of memory{': ' + first if first else ''}",
                        hint="lower train.batch_size or data.image_size / data.crop (or eval.long_side); 'dbtk doctor --recipe R' measures what fits")
    if isinstance(exc, OSError):  # any file operation of any command: the one place that explains them
        from dbtk.cli._oserror import file_error

        exc = file_error(exc)
    if isinstance(exc, DbtkError):
        _ui.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    if isinstance(exc, _HELP_ERROR):  # `dbtk` or `dbtk recipe` alone: the help is the message
        exc.show()
        sys.exit(exc.exit_code)
    if isinstance(exc, click.ClickException):
        message = exc.format_message()
        context = getattr(exc, "ctx", None)
        _ui.error(message[:1].lower() + message[1:], f"see '{context.command_path} --help'" if context else None)
        sys.exit(exc.exit_code)
    # Ctrl-C or SIGTERM: click turns a KeyboardInterrupt (at start-up too, e.g. while importing torch) into Abort.
    stop = exc if isinstance(exc, Interrupted) else exc.__cause__ or exc.__context__
    if isinstance(stop, Interrupted) and stop.signum != signal.SIGINT:
        _ui.error(f"terminated by {stop.signal_name}")
        sys.exit(stop.exit_code)
    _ui.error("interrupted")
    sys.exit(130)
