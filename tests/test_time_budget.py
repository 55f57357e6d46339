"""train.time_budget: the run measures itself after a warm-up and ends within its budget, the LR at its floor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dbtk import recipe as recipes
from dbtk.engine import budget
from dbtk.errors import DbtkError, RecipeError
from tests.conftest import run_dbtk

RECIPE = """
name = "budget"
seed = 3
[model.decoder]
channels = 32
[data]
format = {{ name = "synthetic", count = 24, val_count = 4, width = 96, height = 96, min_height = 8, max_height = 20 }}
train = "train"
val = "val"
image_size = 96
[train]
time_budget = "{budget}"
batch_size = 2
precision = "fp32"
workers = 0
log_every = 5
val_every = 2
checkpoint_every = 0
[eval]
long_side = 96
[[loggers]]
name = "jsonl"
"""


def write(folder: Path, seconds: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r.toml"
    path.write_text(RECIPE.format(budget=f"{seconds}s"))
    return path


def test_a_budgeted_run_ends_within_ten_percent_with_the_lr_at_its_floor(tmp_path: Path) -> None:
    recipe = write(tmp_path, 45)
    start = time.perf_counter()
    done = run_dbtk("train", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu", timeout=300)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert 0.9 * 45 <= wall <= 1.1 * 45, wall
    planned = int(recipes.load(str(tmp_path / "run" / "recipe.toml")).train.max_steps)
    assert f"time budget 45 s: {planned} steps" in done.stderr
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "lr" in line]
    assert train_lines[-1]["step"] == planned and train_lines[-1]["lr"] == 0.0  # poly ends on its last step

    # --resume (after an early stop) keeps the planned count; it never plans again.
    again = run_dbtk("train", str(recipe), "--out", str(tmp_path / "run"), "--resume", "--device", "cpu", timeout=300)
    assert again.returncode == 0, again.stderr
    assert "time budget" not in again.stderr and f"{planned} steps" in again.stderr


def test_dry_run_prints_the_estimate(tmp_path: Path) -> None:
    done = run_dbtk("train", str(write(tmp_path, 600)), "--out", str(tmp_path / "run"), "--dry-run", "--device", "cpu", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "time budget 10 min:" in done.stderr and "(an estimate: the run measures again)" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("steps", [3, 12])  # 12: as many as one epoch has (the note once landed in "12 steps/epoch")
def test_max_steps_wins_over_a_budget_and_the_plan_line_says_so(tmp_path: Path, steps: int) -> None:
    done = run_dbtk("train", str(write(tmp_path, 600)), "--out", str(tmp_path / "run"), "--dry-run", "--device", "cpu",
                    "--set", f"train.max_steps={steps}", timeout=300)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert f"12 steps/epoch, {steps} steps (train.max_steps; train.time_budget '600s' applies only with max_steps = 0) (batch" in said


def test_a_budget_too_small_for_warm_up_and_one_validation_is_refused() -> None:
    cadence = budget.Cadence(steps_per_epoch=10, val_every=1, val_every_steps=0, checkpoint_every=0, validates=True)
    with pytest.raises(DbtkError) as refused:
        budget.plan(20.0, elapsed=18.0, done=8, step_seconds=0.5, validation_seconds=5.0, checkpoint_seconds=0.1, cadence=cadence)
    # the parts it names add up to the total it gives, and that total exceeds the budget
    assert str(refused.value) == ("train.time_budget 20 s is too small: start-up and 8 warm-up steps took 18.0 s, and one more step "
                                  "needs 0.5 s, 1 validation × 5.0 s and 4 checkpoint writes × 0.1 s: 23.9 s in all")


def test_the_plan_counts_steps_validations_and_checkpoints() -> None:
    cadence = budget.Cadence(steps_per_epoch=10, val_every=1, val_every_steps=0, checkpoint_every=0, validates=True)
    plan = budget.plan(100.0, elapsed=10.0, done=8, step_seconds=1.0, validation_seconds=2.0, checkpoint_seconds=0.5, cadence=cadence)
    cost = lambda steps: 10 + (steps - 8) + 2 * cadence.validations(8, steps) + 0.5 * cadence.checkpoints(8, steps)  # noqa: E731
    assert cost(plan.steps) <= 100.0 < cost(plan.steps + 1)


@pytest.mark.parametrize("text", ["5s", "abc", "30", "91d", "-1m", "30M", "１０m", "2h30", "90 d"])
def test_bad_budgets_are_refused_by_the_recipe(text: str) -> None:
    with pytest.raises(RecipeError, match="time_budget"):
        recipes.structure({"train": {"time_budget": text}}, source="test")


def test_budget_parsing() -> None:
    assert [recipes.duration_seconds(t) for t in ("30m", "2h", "1h30m", "90s", "0.5h", "90d", "1d12h")] == [1800, 7200, 5400, 90, 1800, 90 * 86400, 129600]
