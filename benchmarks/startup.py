"""Start-up time of `dbtk --help` and every `dbtk CMD --help` against `python -c "import click"`.

Usage: python benchmarks/startup.py [--runs 15] [--markdown]

Each measurement is the wall time of a fresh process (interpreter start included), median of N runs, all in
the same session so the ratio against the click baseline is meaningful. Goal: every ratio <= 2.5.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file-system cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--markdown", action="store_true", help="print a docs/benchmarks.md table")
    args = parser.parse_args()

    from dbtk.cli import COMMANDS

    exe = shutil.which("dbtk", path=str(Path(sys.executable).parent)) or "dbtk"
    baseline = median_seconds([sys.executable, "-c", "import click"], args.runs)
    rows = [("python -c 'import click'", baseline)]
    for cmd in [[], *([name] for name in sorted(COMMANDS))]:
        rows.append((" ".join(["dbtk", *cmd, "--help"]), median_seconds([exe, *cmd, "--help"], args.runs)))

    machine = f"{platform.processor() or platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    if args.markdown:
        print(f"Machine: {machine}; median of {args.runs} runs each.\n")
        print("| command | median (ms) | ratio vs click |")
        print("|---|---:|---:|")
        for name, seconds in rows:
            print(f"| `{name}` | {seconds * 1e3:.1f} | {seconds / baseline:.2f}× |")
    else:
        for name, seconds in rows:
            print(f"{name:40s} {seconds * 1e3:8.1f} ms  {seconds / baseline:5.2f}x")
    worst = max(seconds / baseline for _, seconds in rows)
    if worst > 2.5:
        print(f"goal missed: worst ratio {worst:.2f} > 2.5", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
