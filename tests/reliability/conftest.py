"""The reliability suite (``pytest -m reliability``): fuzzed inputs, injected faults, hostile files.

Every test here is marked ``reliability``; the default run uses fixed seeds and bounded example counts, and the
``slow`` variants try many more. At the end of a run the suite prints how many inputs it tried and faults it
injected (the numbers docs/reliability.md quotes).
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

TALLY: Counter = Counter()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if TALLY:
        parts = ", ".join(f"{name}: {count}" for name, count in sorted(TALLY.items()))
        terminalreporter.write_line(f"reliability tally — {parts}")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def assert_clean_error(self, *fragments: str) -> None:
        """Exit 2, one ``error:`` line (plus an optional ``hint:``), no traceback, every fragment in the error."""
        lines = [line for line in self.stderr.splitlines() if line.strip() and not line.startswith("•")]
        assert self.code == 2, f"exit {self.code}, expected 2\n{self.stderr}"
        assert "Traceback" not in self.stderr, self.stderr
        assert lines and lines[0].startswith("error: "), self.stderr
        assert all(line.startswith("hint: ") for line in lines[1:]), self.stderr
        for fragment in fragments:
            assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def run_cli(args: Sequence[str]) -> CliResult:
    """Run the CLI in this process (fast enough for hundreds of fuzz cases), capturing output and exit code."""
    from dbtk.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - anything escaping main() is a bug the suite reports
            code = -1
            print(f"Traceback (escaped main): {type(exc).__name__}: {exc}", file=sys.stderr)
    return CliResult(code, out.getvalue(), err.getvalue())
