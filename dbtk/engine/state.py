"""Training state as one typed value: everything a checkpoint must carry for ``--resume`` to continue bit-for-bit.

:class:`TrainingState` is converted to and from a plain tree in exactly one place (:meth:`TrainingState.to_tree`
and :meth:`TrainingState.from_tree`), both driven by the dataclass fields: a new field is saved and restored
without touching either, and a checkpoint that lacks a field is refused by name rather than half-restored.
The tree becomes safetensors tensors + JSON through :mod:`dbtk.io.tree` (never pickle).
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dbtk.errors import DbtkError

#: Fields that older checkpoints may lack, with the value that reproduces what those versions did.
OPTIONAL = {"repairs": dict, "val_skipped": dict, "overflow_total": lambda: torch.zeros(()), "processes": lambda: 1}


@dataclass
class Position:
    """Where training stands: completed optimizer steps, and the epoch/batch the next step starts from."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # micro-batches of `epoch` already consumed (all processes)


@dataclass
class TrainingState:
    """The trainer's own counters plus the state of the objects it drives (optimizer, scheduler, scaler, RNGs).

    ``bad_total`` and ``overflow_total`` stay device tensors during training (read only at log time: no host
    sync per step).
    """

    position: Position = field(default_factory=Position)
    best_hmean: float = -1.0
    processes: int = 1  # training processes that wrote this state: a resume on another count is said
    bad_total: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # steps with a non-finite loss
    overflow_total: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # fp16 scaler overflows (skipped)
    skipped: Counter = field(default_factory=Counter)  # training samples skipped, by reason
    repairs: Counter = field(default_factory=Counter)  # training polygons repaired, by reason
    val_skipped: Counter = field(default_factory=Counter)  # validation images skipped, by reason (last validation)
    history: list[dict[str, float]] = field(default_factory=list)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)

    def to_tree(self) -> dict[str, Any]:
        """Every field, as dicts, lists, numbers and tensors."""
        tree: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Position):
                value = dataclasses.asdict(value)
            elif isinstance(value, Counter):
                value = dict(value)
            tree[f.name] = value
        return tree

    @classmethod
    def from_tree(cls, tree: Any, where: str = "checkpoint") -> TrainingState:
        """The inverse of :meth:`to_tree`; a missing or unknown field is an error naming it."""
        if not isinstance(tree, dict):
            raise DbtkError(f"{where}: the training state is not a table")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(tree) - set(OPTIONAL))
        unknown = sorted(set(tree) - names)
        if missing or unknown:
            detail = ", ".join([*(f"missing '{m}'" for m in missing), *(f"unknown '{u}'" for u in unknown)])
            raise DbtkError(f"{where}: the training state does not match this dbtk version ({detail})",
                            hint="resume with the dbtk version that wrote it, or start a new run")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = tree.get(f.name, OPTIONAL.get(f.name, dict)())
            if f.name == "position":  # a table; dbtk 0.x before the typed state wrote [step, epoch, batch]
                value = _position(value, where)
            elif f.type in ("Counter", Counter):
                value = Counter(value)
            elif f.name == "best_hmean":
                value = _checked(value, where, "best_hmean", "a number from -1 to 1",
                                 lambda v: isinstance(v, (int, float)) and -1 <= v <= 1, float)
            elif f.name == "processes":
                value = _checked(value, where, "processes", "a whole number ≥ 1", lambda v: isinstance(v, int) and v >= 1, int)
            elif f.name == "history":
                value = list(value)
            values[f.name] = value
        return cls(**values)


def _checked(value: Any, where: str, name: str, what: str, valid: Callable[[Any], bool], kind: type) -> Any:
    """``kind(value)`` when ``valid`` — booleans never are numbers here — else an error naming the field: a hand-edited
    or damaged state is refused in one line, not met with a traceback halfway through the resume."""
    if isinstance(value, bool) or not valid(value):
        raise DbtkError(f"{where}: the training state's '{name}' is {value!r}, not {what}",
                        hint="resume from another checkpoint of the run, or start a new run")
    return kind(value)


def _position(value: Any, where: str) -> Position:
    fields = [f.name for f in dataclasses.fields(Position)]
    if isinstance(value, list) and len(value) == len(fields):
        value = dict(zip(fields, value, strict=True))
    if not isinstance(value, dict) or sorted(value) != sorted(fields):
        raise DbtkError(f"{where}: the training state's 'position' is {value!r}, not a table of {', '.join(fields)}",
                        hint="resume from another checkpoint of the run, or start a new run")
    whole = [_checked(value[name], where, f"position.{name}", "a whole number ≥ 0",
                      lambda v: isinstance(v, int) and v >= 0, int) for name in fields]
    return Position(*whole)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU visible when saved; resuming with fewer GPUs (or another CUDA_VISIBLE_DEVICES) sets
        # those that exist. Training randomness lives in the CPU generators, so results do not depend on it.
        for index, generator_state in enumerate(list(state["cuda"])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator_state, index)
