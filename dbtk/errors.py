"""User-facing errors.

Anything raised as :class:`DbtkError` is a mistake the user can fix (a recipe typo, a missing file, a
broken plugin); the CLI prints it as one red line plus an optional hint, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DbtkError(Exception):
    """An error the user can act on. ``exit_code`` 2 means bad input (usage), 1 means a failed check."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class CheckFailed(DbtkError):
    """A check command found problems (``--check``, ``--budget``, doctor): exit code 1, not a usage error."""

    exit_code = 1


class RecipeError(DbtkError):
    """The recipe (file, ``--set`` override or component table) is invalid."""


class RegistryError(DbtkError):
    """A component is unknown, ambiguous, or its plugin failed to import."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


class Interrupted(KeyboardInterrupt):
    """A stop signal, received as a KeyboardInterrupt: SIGTERM (``kill``, ``docker stop``, a batch scheduler ending a
    job) would otherwise end the process at once, and a training run would lose every step since its last
    checkpoint; with it a command ends as on Ctrl-C (training saves first). The exit code is 128 + the signal's
    number, what a shell reports for a process that signal ended (143 for SIGTERM, 130 for Ctrl-C's SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum

    @property
    def signal_name(self) -> str:
        import signal

        return signal.Signals(self.signum).name
