"""``dbtk train``: train a DBNet from a recipe into a run folder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pathlib import Path

    from dbtk.engine.trainer import Trainer
    from dbtk.recipe import Recipe


@click.command()
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. train.lr=5e-4.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (default: runs/NAME).")
@click.option("--resume", "resume", is_flag=False, flag_value="", default=None, metavar="[CHECKPOINT]",
              help="Continue a run: from RUN/checkpoints/last.safetensors, or from the given checkpoint.")
@click.option("--dry-run", is_flag=True, help="Validate the recipe, build everything, print the plan, and stop.")
@click.option("--device", default=None, help="Override train.device (auto, cpu, cuda, cuda:N, mps).")
@click.option("--stop-at", type=click.IntRange(min=1), default=None, metavar="STEP",
              help="Save checkpoints/last and stop after this optimizer step (time-limited jobs); --resume continues.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes on this machine (one per GPU): runs this command under torchrun with DDP.")
def train(
    recipe_path: str, overrides: tuple[str, ...], out_dir: str | None, resume: str | None, dry_run: bool,
    device: str | None, stop_at: int | None, nproc: int,
) -> None:
    """Train with RECIPE (a TOML file; see 'dbtk recipe keys').

    Writes RUN/recipe.toml (resolved), RUN/metrics.jsonl, RUN/checkpoints/{last,best}.safetensors and
    RUN/curves.png. Ctrl-C saves checkpoints/last.safetensors and exits with code 130; --resume continues.
    Several GPUs: --nproc N, or torchrun --nproc_per_node N -m dbtk train RECIPE (docs/distributed.md).
    """
    import os
    from pathlib import Path

    from dbtk import recipe as recipes
    from dbtk.cli import _ui
    from dbtk.errors import DbtkError

    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        _ui.step(f"starting {nproc} processes with torchrun")
        argv = ["train", recipe_path, *(f"--set={o}" for o in overrides), *(["--out", out_dir] if out_dir else []),
                *([f"--resume={resume}"] if resume else ["--resume"] if resume == "" else []),
                *(["--dry-run"] if dry_run else []), *(["--device", device] if device else []),
                *(["--stop-at", str(stop_at)] if stop_at else [])]
        from dbtk.engine.distributed import launch  # imports torch: after the first line

        raise SystemExit(launch(nproc, argv))
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    say = _ui.step if main_rank else (lambda _message: None)
    say(f"reading {recipe_path}")
    recipe = recipes.load(recipe_path, overrides)
    run_dir = Path(out_dir) if out_dir else Path("runs") / recipe.name
    resume_from = None
    if resume is not None:
        resume_from = Path(resume) if resume else run_dir / "checkpoints" / "last.safetensors"
        if not resume_from.is_file():
            raise DbtkError(f"nothing to resume: {resume_from} does not exist", hint="start without --resume, or pass the checkpoint path")
    elif (run_dir / "checkpoints" / "last.safetensors").exists() and not dry_run:
        raise DbtkError(f"{run_dir} already holds a run", hint="continue it with --resume, or choose another folder with --out")
    say("building model and data (imports torch)...")
    from dbtk.engine import distributed
    from dbtk.engine.trainer import Trainer

    trainer = None
    try:
        trainer = Trainer(recipe, run_dir, resume_from=resume_from, device=device, stop_at=stop_at or 0)
        _run(trainer, recipe, run_dir, dry_run, resume_from is not None, main_rank)
        distributed.barrier()  # under DDP the ranks tear down together, after rank 0's last write
    finally:
        # Free DDP's reducer while the process group and the interpreter are fully alive: gloo work still held at
        # interpreter shutdown can abort a rank (SIGABRT, "terminate called without an active exception").
        del trainer
        distributed.leave()


def _run(trainer: Trainer, recipe: Recipe, run_dir: Path, dry_run: bool, resuming: bool, main_rank: bool) -> None:
    from dbtk import recipe as recipes
    from dbtk.cli import _ui
    from dbtk.engine.trainer import StopRequested

    if not main_rank:  # other DDP ranks train silently; rank 0 reports for all
        if dry_run:
            return
        try:
            trainer.run()
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        except StopRequested:
            return
        return
    processes = f" × {trainer.world.size} processes" if trainer.world.distributed else ""
    plan = (
        f"{len(trainer.dataset)} training images, {trainer.steps_per_epoch} steps/epoch, {trainer.total_steps} steps "
        f"(batch {recipe.train.batch_size} × accumulate {recipe.train.accumulate}{processes}), {recipe.train.precision} on {trainer.device}"
        + (f", resuming at step {trainer.position.step}" if resuming else "")
    )
    _ui.step(plan)
    if dry_run:
        _ui.console().print(f"[green]✓[/] dry run: recipe, components and data are ready; run folder would be {run_dir}")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.toml").write_text(recipes.dumps(recipe), encoding="utf-8")
    try:
        trainer.run()
    except KeyboardInterrupt:
        _ui.warn(f"interrupted at step {trainer.position.step}: saved {run_dir / 'checkpoints' / 'last.safetensors'}; continue with --resume")
        raise SystemExit(130) from None
    except StopRequested:
        _ui.console().print(f"[green]✓[/] stopped after step {trainer.position.step} as asked; continue with --resume")
        return
    best = f", best val hmean {trainer.state.best_hmean:.4f}" if trainer.state.best_hmean >= 0 else ""
    _ui.console().print(f"[green]✓[/] finished {trainer.position.step} steps{best}; run folder {run_dir}")
    if trainer.state.skipped:
        _ui.warn("skipped samples: " + ", ".join(f"{k} {v}" for k, v in sorted(trainer.state.skipped.items())))
    if trainer.state.repairs:
        _ui.warn("repaired polygons: " + ", ".join(f"{k} {v}" for k, v in sorted(trainer.state.repairs.items())) + " (see 'dbtk clean-data')")
