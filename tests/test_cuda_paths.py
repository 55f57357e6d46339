"""Training-side CUDA defects, exercised on the CPU: validation must not change training, fp16 overflow is not a
bad step, resume works with fewer GPUs, ``cuda:N`` becomes the current device."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch

from dbtk import recipe as recipes
from dbtk.engine import state as state_module
from dbtk.engine.trainer import Trainer
from dbtk.errors import DbtkError
from tests.test_train import poison_every_batch, tiny


def test_nchw_training_is_identical_whether_it_validates_every_step_or_never(tmp_path: Path) -> None:
    """Validation used to convert the live model to channels-last, leaving AdamW's moments in the old layout."""
    runs = {}
    for name, val_every_steps in (("never", 0), ("every", 1)):
        recipe = tiny(**{"train.max_steps": 4, "train.val_every_steps": val_every_steps, "train.checkpoint_every": 0, "data.val": "val"})
        recipe = attrs.evolve(recipe, train=attrs.evolve(recipe.train, channels_last=False))
        trainer = Trainer(recipe, tmp_path / name)
        trainer.run()
        assert all(p.is_contiguous() for p in trainer.model.parameters())  # still NCHW
        runs[name] = trainer
    assert any("val/hmean" in h for h in runs["every"].state.history)
    never, every = (dict(runs[k].model.state_dict()) for k in ("never", "every"))
    assert all(torch.equal(never[k], every[k]) for k in never)


def test_fp16_scaler_overflow_is_skipped_and_counted_not_a_bad_step(tmp_path: Path) -> None:
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("this torch has no CPU GradScaler")
    trainer = Trainer(tiny("fp16", **{"train.max_bad_steps": 1}), tmp_path / "run")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # overflows the first steps, then recovers
    trainer.run()
    assert trainer.position.step == 6
    last = trainer.state.history[-1]
    assert last["bad_steps"] == 0 and last["overflow_steps"] >= 1
    assert trainer.scaler.get_scale() < 2.0**60  # the scaler reacted to the overflows


def test_fp16_non_finite_loss_is_still_a_bad_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("this torch has no CPU GradScaler")
    poison_every_batch(monkeypatch)
    trainer = Trainer(tiny("fp16", **{"train.max_bad_steps": 2}), tmp_path / "run")
    with pytest.raises(DbtkError, match="2 consecutive steps had a non-finite loss"):
        trainer.run()


def test_rng_state_of_more_gpus_resumes_with_fewer(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = state_module.rng_state()
    saved["cuda"] = [torch.get_rng_state()] * 4  # written on a 4-GPU machine
    set_calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda value, device: set_calls.append(device))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("sets every saved GPU state"))
    state_module.set_rng_state(saved)
    assert set_calls == [0, 1]


def test_explicit_cuda_index_becomes_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbtk.io.device import resolve_device

    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert current == [torch.device("cuda:1")]
    resolve_device("cuda")
    assert current == [torch.device("cuda:1")]  # no index: the current device stays what CUDA_VISIBLE_DEVICES says


def test_batches_reach_the_device_with_their_counters_untouched() -> None:
    """The loader's batches go through :func:`dbtk.io.device.on_device` (a side-stream copy on CUDA): tensors
    arrive on the device with their values, the skip and repair counters as they were, in order."""
    from collections import Counter

    from dbtk.io.device import on_device

    batches = [{"images": torch.full((2, 3), float(i)), "skipped": Counter({"nan": i})} for i in range(3)]
    moved = list(on_device(iter(batches), torch.device("cpu")))
    assert [b["skipped"] for b in moved] == [Counter({"nan": i}) for i in range(3)]
    assert all(torch.equal(m["images"], b["images"]) and m["images"].device.type == "cpu" for m, b in zip(moved, batches, strict=True))


def test_masks_travel_as_uint8_and_reach_the_loss_as_float32(tmp_path: Path) -> None:
    """The loader's masks are uint8 (a quarter of the bytes to pin and copy); a loss still gets float32 maps."""
    from dbtk.data.dataset import MASK_KEYS, DetectionDataset, collate
    from dbtk.data.synthetic import SyntheticText

    recipe = tiny(**{"train.max_steps": 1, "train.checkpoint_every": 0})
    dataset = DetectionDataset(SyntheticText(recipes.Split("train"), count=2, width=64, height=64), recipe.data, train=True, seed=0)
    batch = collate([dataset[0], dataset[1]])
    assert all(batch[key].dtype == torch.uint8 for key in MASK_KEYS) and batch["thresh_map"].dtype == torch.float32
    trainer = Trainer(recipe, tmp_path / "run")
    seen = []
    loss = trainer.loss_fn

    def recording(outputs: dict, targets: dict) -> dict:
        seen.append({key: targets[key].dtype for key in (*MASK_KEYS, "thresh_map")})
        return loss(outputs, targets)

    trainer.loss_fn = recording
    trainer.run()
    assert seen and all(dtype == torch.float32 for step in seen for dtype in step.values())


def test_a_run_resumed_on_another_process_count_says_so(tmp_path: Path) -> None:
    """Outsider finding: a 2-process run resumed on 1 process trained on without a word (half the images a step)."""
    from dbtk.io.checkpoint import read_training_state, save_weights

    recipe = tiny(**{"train.max_steps": 2, "train.checkpoint_every": 1})
    first = Trainer(recipe, tmp_path / "run")
    first.run()
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    _, saved_recipe, tree = read_training_state(last)
    assert tree["processes"] == 1
    said: list[str] = []
    Trainer(recipe, tmp_path / "run", resume_from=last, say=said.append)
    assert not any("process" in line for line in said)  # the same count: nothing to say
    tree["processes"] = 2  # as a run under --nproc 2 saves it
    save_weights(last, first.model, saved_recipe, tree)
    Trainer(recipe, tmp_path / "run", resume_from=last, say=said.append)
    batch = recipe.train.batch_size * recipe.train.accumulate
    assert any(f"resuming a run of 2 training processes on 1: a step now takes {batch} images instead of {2 * batch}" in line for line in said), said
