"""``dbtk doctor``: can this machine train, and with what settings? Every finding carries a fix."""

from __future__ import annotations

from pathlib import Path

import click

from dbtk.cli import ExistingPath, FiniteFloatRange


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.option("--recipe", "recipe_path", type=ExistingPath(dir_okay=False), help="Also measure this recipe's model at its batch and image size.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Recipe overrides for --recipe.")
@click.option("--steps", type=click.IntRange(0, 100_000), default=0, show_default=True,
              help="With --recipe: also train N steps on the recipe's real data (throughput, data waits, skipped samples, finite loss, peak memory).")
@click.option("--require-cuda", is_flag=True, help="Fail when no CUDA GPU is usable.")
@click.option("--timeout", type=FiniteFloatRange(1.0, 86_400.0), default=60.0, show_default=True,
              help="Seconds each probe may take before it is reported as hung (1 to 86400).")
@click.option("--out", "run_dir", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="Where runs will be written (for the disk check).")
def doctor(as_json: bool, recipe_path: str | None, overrides: tuple[str, ...], steps: int, require_cuda: bool, timeout: float, run_dir: str) -> None:
    """Diagnose Python, torch/CUDA/cuDNN, GPUs, libraries, data loading, disk and plugins.

    Each probe runs in its own process with a timeout, so a hanging driver or plugin cannot hang doctor.
    Exit 0 when training can run on the best available device, 1 when something blocks it.
    """
    import platform
    import sys

    from dbtk.cli import _ui
    from dbtk.doctor import probes, rules

    from dbtk.errors import DbtkError

    if (steps or overrides) and not recipe_path:
        raise DbtkError(f"{'--steps' if steps else '--set'} needs --recipe", hint="dbtk doctor --recipe recipes/rtx3060.toml --steps 50")
    _require_writable_folder(Path(run_dir))
    workers = None
    if recipe_path:
        from dbtk import recipe as recipes

        workers = recipes.load(recipe_path, overrides).train.workers
    findings: list[rules.Finding] = [rules.Finding("python", rules.OK, f"Python {platform.python_version()} on {platform.platform()} ({sys.executable})")]
    system = probes.system_probe(Path(run_dir))
    findings += rules.system_findings(system, workers)
    # The torch probe, the recipe measurement and the --steps run use the GPU: one at a time (probes.run_jobs).
    gpu_jobs = [("torch", lambda: rules.torch_findings(probes.torch_probe(timeout), require_cuda))]
    if recipe_path:
        gpu_jobs.append(("recipe", lambda: rules.recipe_findings(probes.measure_recipe(recipe_path, overrides, max(timeout, 300.0)))))
    if steps:
        gpu_jobs.append(("recipe run", lambda: rules.run_findings(probes.run_recipe(recipe_path, overrides, steps, max(timeout, 600.0)), system.get("cpu_count"))))
    cpu_jobs = [
        ("libraries", lambda: rules.library_findings(probes.versions_probe(timeout))),
        ("plugins", lambda: _plugin_findings(probes.plugins_probe(timeout))),
    ]

    live = None if as_json else _start_live(findings)
    for _name, found, pending in probes.run_jobs(gpu_jobs, cpu_jobs):  # the table fills in as probes finish
        findings += found
        if live is not None:
            live.update(_table(findings, pending=pending), refresh=True)
    if live is not None:
        live.update(_table(findings, pending=[]), refresh=True)
        live.stop()
        if not live.console.is_terminal:  # rich ends a live display on a pipe without its last line break
            live.console.line()
    code = rules.exit_code(findings)
    if as_json:
        _ui.print_json({"ok": code == 0, "findings": [f.as_dict() for f in findings]})
    else:
        cuda = any(f.check == "cuda" and f.status == rules.OK for f in findings)
        verdict = "training can run on the GPU" if cuda else "training can run on the CPU"
        _ui.console().print(f"[green]✓[/] {verdict}" if code == 0 else "[red]✗[/] something blocks training: see the fixes above")
    raise SystemExit(code)


def _plugin_findings(result):  # noqa: ANN001, ANN202
    from dbtk.doctor import rules

    if isinstance(result, dict):  # the probe itself timed out or crashed
        if "crash" in result:
            return [rules.crash_finding("plugins", "plugins", result)]
        detail = f"timed out after {result['timeout']:g} s" if result.get("status") == "timeout" else result.get("error", "failed")
        return [rules.Finding("plugins", rules.FAIL, f"listing/importing plugins {detail}", "run 'dbtk plugins --check' to find the plugin at fault")]
    return rules.plugin_findings(result)


def _table(findings, pending):  # noqa: ANN001, ANN202
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="dbtk doctor", title_justify="left", show_lines=False)
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    table.add_column("fix")
    style = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]fail[/]"}
    for f in findings:
        table.add_row(escape(f.check), style[f.status], escape(f.detail), escape(f.fix))
    for name in pending:
        table.add_row(name, "[dim]…[/]", "[dim]probing[/]", "")
    return table


def _start_live(findings):  # noqa: ANN001, ANN202
    from rich.live import Live

    from dbtk.cli import _ui

    live = Live(_table(findings, pending=["probes"]), console=_ui.console(), auto_refresh=False)
    live.start(refresh=True)
    return live


def _require_writable_folder(folder: Path) -> None:
    """--out must be a folder training could create and write: the disk check measures where it would live."""
    import os
    import tempfile

    from dbtk.errors import DbtkError

    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DbtkError(f"--out {folder.resolve()}: {existing} is a file, so no run folder can be made there")
    try:  # access() says yes to root even where the kernel refuses (sysfs, procfs): really create something
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".dbtk-doctor-"))
    except OSError as exc:
        raise DbtkError(f"--out {folder.resolve()}: cannot create folders in {existing} ({exc.strerror})", hint="choose another --out") from None
