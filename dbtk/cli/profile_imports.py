"""``dbtk profile-imports``: how long each command takes to start, and which imports cost the time.

Each command's ``--help`` path runs in a fresh interpreter under ``python -X importtime``; the report shows the
heaviest modules and the total, and ``--budget`` turns a slow start into exit code 1 (for CI).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import click

from dbtk.cli import FiniteFloatRange

#: Modules that must never be imported on a ``--help`` path (the start-up rule).
HEAVY_MODULES = ("torch", "torchvision", "timm", "numpy", "cv2", "shapely", "pyclipper")


@dataclass
class ImportProfile:
    """Parsed ``-X importtime`` output of one command."""

    command: str
    total_us: int = 0
    modules: list[tuple[str, int, int]] = field(default_factory=list)  # (name, self_us, cumulative_us)

    @property
    def heavy(self) -> list[str]:
        top_level = {name.partition(".")[0] for name, _, _ in self.modules}
        return [m for m in HEAVY_MODULES if m in top_level]


def parse_importtime(stderr: str, command: str = "") -> ImportProfile:
    """Read CPython's ``import time: self | cumulative | name`` lines; the total sums the outermost imports."""
    profile = ImportProfile(command)
    rows: list[tuple[str, int, int, int]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        raw_name = parts[2].rstrip()
        name = raw_name.lstrip()
        rows.append((name, int(parts[0]), int(parts[1]), len(raw_name) - len(name)))
    if rows:
        outermost = min(indent for *_, indent in rows)
        profile.total_us = sum(cumulative for _, _, cumulative, indent in rows if indent == outermost)
        profile.modules = [(name, self_us, cumulative) for name, self_us, cumulative, _ in rows]
    return profile


def profile_command(args: list[str]) -> ImportProfile:
    """Run ``dbtk ARGS --help`` in a fresh interpreter with -X importtime and parse the result."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dbtk", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        from dbtk.errors import DbtkError

        raise DbtkError(f"'dbtk {' '.join(args)} --help' failed: {proc.stderr.strip().splitlines()[-1:]}")
    return parse_importtime(proc.stderr, " ".join(["dbtk", *args]))


@click.command("profile-imports")
@click.argument("commands", nargs=-1)
@click.option("--top", type=click.IntRange(1, 10_000), default=10, show_default=True, help="How many of the heaviest modules to show.")
@click.option("--budget", type=FiniteFloatRange(0, 3600, min_open=True), default=None, help="Exit 1 if any command's imports take longer (seconds).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def profile_imports(commands: tuple[str, ...], top: int, budget: float | None, as_json: bool) -> None:
    """Measure the import time of 'dbtk COMMAND --help' (default: dbtk itself and every command)."""
    from dbtk.cli import COMMANDS, _ui
    from dbtk.errors import CheckFailed, DbtkError, did_you_mean

    for name in commands:
        if name not in COMMANDS:
            raise DbtkError(f"unknown command '{name}'{did_you_mean(name, COMMANDS)}", hint=f"commands: {', '.join(sorted(COMMANDS))}")
    targets = [[name] for name in commands] if commands else [[], *([name] for name in sorted(COMMANDS))]
    if not as_json:
        _ui.step(f"profiling {len(targets)} start-up path(s) in fresh interpreters...")
    profiles = [profile_command(args) for args in targets]
    over = [p for p in profiles if budget is not None and p.total_us / 1e6 > budget]

    if as_json:
        _ui.print_json(
            [
                {
                    "command": p.command,
                    "import_seconds": p.total_us / 1e6,
                    "heavy_modules": p.heavy,
                    "top": [
                        {"module": n, "self_seconds": s / 1e6, "cumulative_seconds": c / 1e6}
                        for n, s, c in sorted(p.modules, key=lambda m: -m[2])[:top]
                    ],
                    "over_budget": p in over,
                }
                for p in profiles
            ]
        )
    else:
        _print_tables(profiles, top, budget)
    if over:
        raise CheckFailed(
            f"over the {budget:g} s import budget: " + ", ".join(f"'{p.command}' ({p.total_us / 1e6:.3f} s)" for p in over),
            hint="run 'dbtk profile-imports COMMAND' to see which modules cost the time",
        )


def _print_tables(profiles: list[ImportProfile], top: int, budget: float | None) -> None:
    from rich.table import Table

    from dbtk.cli import _ui

    summary = Table(title="start-up import time", title_justify="left")
    summary.add_column("command")
    summary.add_column("imports (ms)", justify="right")
    summary.add_column("modules", justify="right")
    summary.add_column("heavy modules")
    for p in profiles:
        slow = budget is not None and p.total_us / 1e6 > budget
        ms = f"{p.total_us / 1e3:.1f}"
        summary.add_row(
            p.command,
            f"[red]{ms}[/]" if slow else ms,
            str(len(p.modules)),
            f"[red]{', '.join(p.heavy)}[/]" if p.heavy else "[green]none[/]",
        )
    _ui.console().print(summary)

    slowest = max(profiles, key=lambda p: p.total_us)
    detail = Table(title=f"heaviest imports of '{slowest.command} --help'", title_justify="left")
    detail.add_column("module")
    detail.add_column("cumulative (ms)", justify="right")
    detail.add_column("self (ms)", justify="right")
    for name, self_us, cumulative in sorted(slowest.modules, key=lambda m: -m[2])[:top]:
        detail.add_row(name, f"{cumulative / 1e3:.1f}", f"{self_us / 1e3:.1f}")
    _ui.console().print(detail)
