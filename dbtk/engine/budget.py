"""``train.time_budget``: fix the step count from measured costs, so a run ends within the wall time it was given.

The trainer measures what a run is made of after a short warm-up — seconds per optimizer step (steps 3–8: the
first ones also allocate optimizer state and compile), one checkpoint write and one validation pass — and picks
the largest step count whose steps, validations and checkpoint writes, counted from the recipe's cadence, fit in
what is left of the budget. The LR schedule is then stretched to end exactly on that step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dbtk.errors import DbtkError

#: Steps excluded from the measurement (optimizer state allocation, compilation, the loader starting up).
SKIP = 2
#: Steps measured after those.
MEASURED = 6
#: Largest step count a plan may reach (the recipe's own bound on max_steps).
MAX_STEPS = 100_000_000


@dataclass(frozen=True)
class Cadence:
    """When a run validates and writes checkpoints (from the recipe), to count them for any step count."""

    steps_per_epoch: int
    val_every: int  # epochs; 0 = never
    val_every_steps: int  # 0 = never
    checkpoint_every: int  # 0 = epoch ends only
    validates: bool  # a validation split exists

    def validations(self, after: int, until: int) -> int:
        """Validations in steps (after, until], plus the final one; an upper bound when cadences coincide."""
        if not self.validates:
            return 0
        count = _multiples(after, until, self.val_every_steps)
        if self.val_every:
            count += _multiples(after, until, self.steps_per_epoch * self.val_every)
        return count + 1

    def checkpoints(self, after: int, until: int) -> int:
        """Checkpoint writes in steps (after, until]: the cadence, epoch ends, three around each validation (``last``
        before it; after it ``last`` again with its score, and ``best`` when it finds a new best), the end."""
        return (_multiples(after, until, self.checkpoint_every) + _multiples(after, until, self.steps_per_epoch)
                + 3 * self.validations(after, until) + 1)


def _multiples(after: int, until: int, every: int) -> int:
    return until // every - after // every if every > 0 else 0


def _times(count: int, what: str) -> str:
    return f"{count} {what}{'s' if count != 1 else ''}"


@dataclass(frozen=True)
class Plan:
    steps: int
    budget: float
    step_seconds: float
    validation_seconds: float
    checkpoint_seconds: float
    validations: int
    checkpoints: int

    def describe(self) -> str:
        return (
            f"time budget {minutes(self.budget)}: {self.steps} steps ({self.step_seconds:.2f} s/step measured, "
            f"{self.validations} validations × {self.validation_seconds:.1f} s, {self.checkpoints} checkpoints × "
            f"{self.checkpoint_seconds:.2f} s)"
        )


def plan(
    budget: float,
    elapsed: float,
    done: int,
    step_seconds: float,
    validation_seconds: float,
    checkpoint_seconds: float,
    cadence: Cadence,
) -> Plan:
    """The largest step count that ends within ``budget`` seconds, ``elapsed`` of which are spent at step ``done``."""

    def cost(steps: int) -> float:
        return (elapsed + (steps - done) * step_seconds + cadence.validations(done, steps) * validation_seconds
                + cadence.checkpoints(done, steps) * checkpoint_seconds)

    if cost(done + 1) > budget:  # every part of the smallest run, so that the numbers add up to more than the budget
        validations, checkpoints = cadence.validations(done, done + 1), cadence.checkpoints(done, done + 1)
        validation = f", {_times(validations, 'validation')} × {validation_seconds:.1f} s" if validations else ""
        raise DbtkError(
            f"train.time_budget {minutes(budget)} is too small: start-up and {done} warm-up steps took {elapsed:.1f} s, "
            f"and one more step needs {step_seconds:.1f} s{validation} and {_times(checkpoints, 'checkpoint write')} × "
            f"{checkpoint_seconds:.1f} s: {cost(done + 1):.1f} s in all",
            hint="give a longer budget, or set train.max_steps instead",
        )
    low, high = done + 1, MAX_STEPS  # cost grows with steps: the last affordable count by bisection
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= budget else (low, middle - 1)
    return Plan(low, budget, step_seconds, validation_seconds, checkpoint_seconds,
                cadence.validations(done, low), cadence.checkpoints(done, low))


def minutes(seconds: float) -> str:
    """A budget as people wrote it: ``30 min``, ``45 s``."""
    return f"{seconds / 60:g} min" if seconds >= 60 and math.isclose(seconds % 60, 0) else f"{seconds:g} s"
