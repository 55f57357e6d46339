"""The ``dbtk`` command line: a lazy click group.

Command modules are imported only when their command runs (or when ``--help`` lists them), following click's
LazyGroup pattern, so ``dbtk --help`` never pays for torch. Errors the user can fix (:class:`DbtkError`) become
one red line plus a hint and exit code 2; ``--debug`` (or ``DBTK_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from dbtk import __version__
from dbtk.errors import DbtkError

#: Command name -> "module:attribute". One module per command; nothing here is imported until needed.
COMMANDS: dict[str, str] = {
    "clean-data": "dbtk.cli.clean_data:clean_data",
    "doctor": "dbtk.cli.doctor:doctor",
    "eval": "dbtk.cli.eval:eval_command",
    "export": "dbtk.cli.export:export",
    "models": "dbtk.cli.models:models",
    "plugins": "dbtk.cli.plugins:plugins",
    "predict": "dbtk.cli.predict:predict",
    "profile-imports": "dbtk.cli.profile_imports:profile_imports",
    "recipe": "dbtk.cli.recipe:recipe",
    "train": "dbtk.cli.train:train",
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


def main(args: Sequence[str] | None = None, prog_name: str = "dbtk") -> None:
    """Console-script entry point: runs the CLI and turns user errors into one-line messages."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("DBTK_DEBUG") == "1"
    try:
        cli.main(argv, prog_name=prog_name, standalone_mode=False)
    except DbtkError as exc:
        if debug:
            raise
        from dbtk.cli import _ui

        _ui.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `dbtk plugins | head`
        sys.stderr.close()
        sys.exit(0)
