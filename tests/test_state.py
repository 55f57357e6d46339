"""Training state is one typed value: every field saved is restored, and an incomplete state is refused by name."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch

from dbtk.engine.state import Position, TrainingState
from dbtk.errors import DbtkError
from dbtk.io.checkpoint import read_training_state
from dbtk.io.tree import flatten, unflatten


def full_state() -> TrainingState:
    """A state where every field differs from its default, so a field that is not restored shows."""
    return TrainingState(
        position=Position(7, 2, 3),
        best_hmean=0.5,
        processes=2,
        bad_total=torch.tensor(2.0),
        overflow_total=torch.tensor(3.0),
        skipped=Counter({"corrupt": 1}),
        repairs=Counter({"out_of_bounds": 4}),
        val_skipped=Counter({"truncated": 1}),
        history=[{"step": 1, "loss": 0.5}],
        optimizer={"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        scheduler={"last_epoch": 7},
        scaler={"scale": 1.0},
        rng={"torch": torch.arange(4, dtype=torch.uint8)},
    )


def test_every_field_survives_a_round_trip_through_the_file_format() -> None:
    state = full_state()
    defaults = TrainingState()
    for field in dataclasses.fields(TrainingState):  # the fixture really sets every field
        assert repr(getattr(state, field.name)) != repr(getattr(defaults, field.name)), field.name
    restored = TrainingState.from_tree(unflatten(*flatten(state.to_tree())))
    for field in dataclasses.fields(TrainingState):
        assert repr(getattr(restored, field.name)) == repr(getattr(state, field.name)), field.name
    assert isinstance(restored.repairs, Counter) and isinstance(restored.position, Position)


def test_a_state_missing_a_field_is_refused_by_name() -> None:
    tree = full_state().to_tree()
    del tree["skipped"]
    with pytest.raises(DbtkError, match="missing 'skipped'"):
        TrainingState.from_tree(tree)
    tree = {**full_state().to_tree(), "surprise": 1}
    with pytest.raises(DbtkError, match="unknown 'surprise'"):
        TrainingState.from_tree(tree)


def test_resume_restores_repairs_and_skips(tmp_path: Path) -> None:
    from tests.test_train import tiny

    from dbtk.engine.trainer import StopRequested, Trainer

    first = Trainer(tiny(), tmp_path / "run", stop_at=2)
    with pytest.raises(StopRequested):
        first.run()
    first.state.repairs["orientation"] += 5  # as if the label path had repaired polygons
    first.save("last", collective=False)
    _, _, tree = read_training_state(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert tree["repairs"]["orientation"] >= 5
    resumed = Trainer(tiny(), tmp_path / "run", resume_from=tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert resumed.state.repairs == first.state.repairs
    assert resumed.state.position == first.state.position


HOSTILE_NUMBERS = ["x", None, [3], {"a": 1}, True, -1, -2, 2.5, float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("name", ["processes", "best_hmean", "position.step", "position.epoch", "position.batch"])
def test_a_damaged_number_in_the_state_is_refused_by_name(name: str) -> None:
    """Every number the state carries, given values a hand-edited or damaged file may hold: one DbtkError naming
    the field, never a traceback (found: 'processes' = "x" ended in a ValueError)."""
    for bad in HOSTILE_NUMBERS:
        if name == "best_hmean" and isinstance(bad, (int, float)) and not isinstance(bad, bool) and -1 <= bad <= 1:
            continue  # -1 is best_hmean's own default
        tree = full_state().to_tree()
        if name.startswith("position."):
            tree["position"] = {**tree["position"], name.split(".")[1]: bad}
        else:
            tree[name] = bad
        with pytest.raises(DbtkError, match=f"'{name}' is "):
            TrainingState.from_tree(tree, where="last.safetensors")
    tree = full_state().to_tree()
    tree["position"] = {"step": 1}
    with pytest.raises(DbtkError, match="'position' is"):
        TrainingState.from_tree(tree)
    tree["position"] = [4, 1, 2]  # dbtk 0.x wrote a list
    assert TrainingState.from_tree(tree).position == Position(4, 1, 2)
