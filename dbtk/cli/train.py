"""``dbtk train``: train a DBNet from a recipe into a run folder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pathlib import Path

    from dbtk.engine.trainer import Trainer
    from dbtk.recipe import Recipe

#: Largest --stop-at: the recipe's largest step count (dbtk.recipe.MAX_STEPS; not imported: --help stays light).
MAX_STEPS = 100_000_000


def _device(value: str | None, param: click.Parameter) -> str | None:
    """--device checked like train.device (``dbtk.recipe.valid_device``), before anything is built: torch accepts
    names (``meta``, ``xpu``) that dbtk cannot train on, and would refuse others only after the model was built."""
    if value is None:
        return None
    from dbtk.recipe import valid_device

    if not valid_device(value):
        raise click.BadParameter(f"{value!r} is not a device: use auto, cpu, cuda, cuda:N or mps", param=param)
    return value


@click.command()
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. train.lr=5e-4.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (default: runs/NAME).")
@click.option("--resume", "resume", is_flag=False, flag_value="", default=None, metavar="[CHECKPOINT]",
              help="Continue a run: from RUN/checkpoints/last.safetensors, or from the given checkpoint.")
@click.option("--dry-run", is_flag=True, help="Validate the recipe, build everything, print the plan, and stop.")
@click.option("--device", default=None, callback=lambda _ctx, param, value: _device(value, param),
              help="Override train.device (auto, cpu, cuda, cuda:N, mps).")
@click.option("--stop-at", type=click.IntRange(1, MAX_STEPS), default=None, metavar="STEP",
              help="Save checkpoints/last and stop after this optimizer step (time-limited jobs); --resume continues.")
@click.option("--nproc", type=click.IntRange(1, 128), default=1, show_default=True,
              help="Processes on this machine (one per GPU): runs this command under torchrun with DDP.")
def train(
    recipe_path: str, overrides: tuple[str, ...], out_dir: str | None, resume: str | None, dry_run: bool,
    device: str | None, stop_at: int | None, nproc: int,
) -> None:
    """Train with RECIPE (a TOML file; see 'dbtk recipe keys').

    Writes RUN/recipe.toml (resolved), RUN/metrics.jsonl, RUN/checkpoints/{last,best}.safetensors and
    RUN/curves.png. Ctrl-C (or SIGTERM) saves checkpoints/last.safetensors and exits with code 130 (143); --resume
    continues.
    Several GPUs: --nproc N, or torchrun --nproc_per_node N -m dbtk train RECIPE (docs/distributed.md).
    """
    import time
    from pathlib import Path

    started = time.perf_counter()  # a train.time_budget counts the whole command, start-up included

    from dbtk import recipe as recipes
    from dbtk.cli import _ui
    from dbtk.errors import DbtkError

    rank, world_size = torchrun_place()
    if nproc > 1 and world_size == 1:
        recipes.load(recipe_path, overrides)  # a bad recipe or --set: one error here, not one per process
        _ui.step(f"starting {nproc} processes with torchrun")
        argv = ["train", recipe_path, *(f"--set={o}" for o in overrides), *(["--out", out_dir] if out_dir else []),
                *([f"--resume={resume}"] if resume else ["--resume"] if resume == "" else []),
                *(["--dry-run"] if dry_run else []), *(["--device", device] if device else []),
                *(["--stop-at", str(stop_at)] if stop_at else [])]
        from dbtk.engine.distributed import launch  # imports torch: after the first line

        raise SystemExit(launch(nproc, argv))
    main_rank = rank == 0  # under torchrun only rank 0 talks
    say = _ui.step if main_rank else (lambda _message: None)
    say(f"reading {recipe_path}")
    recipe = recipes.load(recipe_path, overrides)
    run_dir = Path(out_dir) if out_dir else Path("runs") / recipe.name
    resume_from = None
    if resume is not None:
        resume_from = Path(resume) if resume else run_dir / "checkpoints" / "last.safetensors"
        if not resume_from.is_file():
            raise DbtkError(f"nothing to resume: {resume_from.absolute()} does not exist", hint="start without --resume, or pass the checkpoint path")
    elif (run_dir / "checkpoints" / "last.safetensors").exists() and not dry_run:
        raise DbtkError(f"{run_dir.absolute()} already holds a run", hint="continue it with --resume, or choose another folder with --out")
    say("building model and data (imports torch)...")
    from dbtk.models.builder import check_model
    from dbtk.engine import distributed
    from dbtk.engine.trainer import Trainer

    if resume_from is not None:
        from dbtk.io.checkpoint import read_training_state

        _, run_recipe, _ = read_training_state(resume_from)  # the run's own recipe: resuming may not change it
        recipe = recipes.with_planned_steps(run_recipe, recipe)
        recipes.check_resume(run_recipe, recipe, f"{resume_from.absolute()} (embedded recipe)")
    from dbtk.registry import registry

    recipes.check_components(recipe, registry)  # what `dbtk recipe check` checks, the same way
    check_model(recipe)
    trainer = None
    try:
        trainer = Trainer(recipe, run_dir, resume_from=resume_from, device=device, stop_at=stop_at or 0, say=say, started=started)
        _run(trainer, recipe, run_dir, dry_run, resume_from is not None, main_rank)
        distributed.barrier()  # under DDP the ranks tear down together, after rank 0's last write
    finally:
        # Free DDP's reducer while the process group and the interpreter are fully alive: gloo work still held at
        # interpreter shutdown can abort a rank (SIGABRT, "terminate called without an active exception").
        del trainer
        distributed.leave()


def torchrun_place() -> tuple[int, int]:
    """(rank, world size) that torchrun put in the environment (``RANK``, ``WORLD_SIZE``); (0, 1) without it.

    Torch-free, so the command can decide whether to launch torchrun before importing torch.
    """
    import os

    from dbtk.errors import DbtkError

    place = []
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1")):
        text = os.environ.get(name, default)
        try:
            place.append(int(text))
        except ValueError:
            raise DbtkError(f"the environment variable {name}={text!r} is not an integer", hint="torchrun sets it; unset it to train in one process") from None
    rank, world_size = place
    if world_size < 1 or not 0 <= rank < world_size:
        raise DbtkError(f"RANK={rank} does not fit WORLD_SIZE={world_size}", hint="torchrun sets both; unset them to train in one process")
    return rank, world_size


def _run(trainer: Trainer, recipe: Recipe, run_dir: Path, dry_run: bool, resuming: bool, main_rank: bool) -> None:
    from dbtk.cli import _ui
    from dbtk.engine import budget
    from dbtk.engine.trainer import StopRequested
    from dbtk.errors import Interrupted

    if not main_rank:  # other DDP ranks train silently; rank 0 reports for all
        if dry_run:
            return
        try:
            trainer.run()
        except KeyboardInterrupt as exc:
            raise SystemExit(getattr(exc, "exit_code", 130)) from None
        except StopRequested:
            return
        return
    processes = f" × {trainer.world.size} processes" if trainer.world.distributed else ""
    steps = f"{trainer.total_steps} steps"
    if trainer.budget is not None:
        steps = f"steps fixed by the time budget ({recipe.train.time_budget})"
    elif recipe.train.time_budget and resuming:  # the count the budget fixed, kept in the run's recipe
        steps = f"{trainer.total_steps} steps (the count train.time_budget {recipe.train.time_budget!r} fixed)"
    elif recipe.train.time_budget:  # max_steps wins
        steps = (f"{trainer.total_steps} steps (train.max_steps; train.time_budget {recipe.train.time_budget!r} "
                 "applies only with max_steps = 0)")
    plan = (
        f"{len(trainer.dataset)} training images, {trainer.steps_per_epoch} steps/epoch, {steps} "
        f"(batch {recipe.train.batch_size} × accumulate {recipe.train.accumulate}{processes}), {recipe.train.precision} on {trainer.device}"
        + (f", resuming at step {trainer.state.position.step}" if resuming else "")
    )
    _ui.step(plan)
    if dry_run:
        if trainer.budget is not None:
            _ui.step(f"measuring the time budget: {budget.SKIP + budget.MEASURED} warm-up steps, a checkpoint and a validation")
            _ui.step(_plan_budget(trainer))
        _ui.console().print(f"[green]✓[/] dry run: recipe, components and data are ready; run folder would be {run_dir.absolute()}")
        return
    try:
        trainer.run()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (dbtk.errors.Interrupted), after the step and its checkpoint
        what = f"terminated by {exc.signal_name}" if isinstance(exc, Interrupted) and exc.exit_code != 130 else "interrupted"
        _ui.warn(f"{what} at step {trainer.state.position.step}: saved {run_dir / 'checkpoints' / 'last.safetensors'}; continue with --resume")
        raise SystemExit(getattr(exc, "exit_code", 130)) from None
    except StopRequested:
        _ui.console().print(f"[green]✓[/] stopped after step {trainer.state.position.step} as asked; continue with --resume")
        return
    best = f", best val hmean {trainer.state.best_hmean:.4f}" if trainer.state.best_hmean >= 0 else ""
    _ui.console().print(f"[green]✓[/] finished {trainer.state.position.step} steps{best}; run folder {run_dir}")
    if trainer.state.skipped:
        _ui.warn("skipped samples: " + ", ".join(f"{k} {v}" for k, v in sorted(trainer.state.skipped.items())))
    if trainer.state.repairs:
        _ui.warn("repaired polygons: " + ", ".join(f"{k} {v}" for k, v in sorted(trainer.state.repairs.items())) + " (see 'dbtk clean-data')")


def _plan_budget(trainer: Trainer) -> str:
    """--dry-run with a time budget: run the warm-up the real run would measure, in a throwaway folder."""
    import tempfile
    from pathlib import Path

    from dbtk.engine.trainer import PlanReady

    with tempfile.TemporaryDirectory(prefix="dbtk-budget-") as folder:
        trainer.run_dir, trainer.plan_only, trainer.loggers = Path(folder), True, []
        try:
            trainer.run()
        except PlanReady as ready:
            return f"{ready.plan.describe()} (an estimate: the run measures again)"
    return "the training set ends before the warm-up: no estimate"
