"""Training engine: resume bit-for-bit, atomic checkpoints under kill -9, NaN steps, logs, CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dbtk import recipe as recipes
from dbtk.io.checkpoint import read_training_state
from dbtk.models.builder import load_model
from dbtk.engine.trainer import StopRequested, Trainer
from dbtk.errors import DbtkError
from tests.conftest import REPO, run_dbtk

TINY = """
name = "tiny"
seed = 3
[model.decoder]
channels = 16
[data]
format = { name = "synthetic", count = 12, val_count = 4, width = 64, height = 64, min_height = 8, max_height = 16 }
train = "train"
image_size = 64
[train]
max_steps = 6
batch_size = 2
precision = "PRECISION"
lr = 1e-3
workers = 0
log_every = 1
val_every = 0
checkpoint_every = 3
[eval]
long_side = 64
[[loggers]]
name = "jsonl"
"""


def tiny(precision: str = "fp32", **overrides: object) -> recipes.Recipe:
    data = recipes.tomllib.loads(TINY.replace("PRECISION", precision))
    for key, value in overrides.items():
        recipes.apply_override(data, f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return recipes.structure(data)


def losses(trainer: Trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.history if "loss" in h]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_reproduces_uninterrupted_run(tmp_path: Path, precision: str) -> None:
    straight = Trainer(tiny(precision), tmp_path / "a")
    straight.run()

    interrupted = Trainer(tiny(precision), tmp_path / "b")
    original_log = interrupted._log_train

    def stop_at_three(*args: object) -> None:
        original_log(*args)
        if interrupted.position.step == 3:
            interrupted._interrupted = True  # what Ctrl-C does: finish the step, save last, stop

    interrupted._log_train = stop_at_three
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    assert interrupted.position.step == 3

    resumed = Trainer(tiny(precision), tmp_path / "b", resume_from=tmp_path / "b" / "checkpoints" / "last.safetensors")
    assert resumed.position.step == 3
    resumed.run()
    assert losses(resumed) == losses(straight)  # the history carries steps 1-3, then 4-6 recomputed
    final_a, final_b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)

    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("when", ["epoch end", "final"])
def test_a_stop_signal_during_validation_ends_it_at_the_next_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """Ctrl-C or SIGTERM while a validation runs: the pass ends at the next image (a large validation set is not
    waited for), no score is recorded for the step, ``last`` is on disk and the run ends as interrupted; --resume
    trains on and scores the final weights."""
    import dbtk.infer.evaluate as evaluate_module

    settings = {"data.val": "val", "data.format.val_count": 6, "eval.batch_size": 1}
    if when == "epoch end":
        settings.update({"train.val_every": 1, "train.max_steps": 12})  # 12 images, batch 2: an epoch is 6 steps
    recipe = tiny(**settings)
    trainer = Trainer(recipe, tmp_path / "run")
    real = evaluate_module.scored_samples
    read: list[int] = []

    def signalled_after_one(reader, result):  # noqa: ANN001, ANN202
        for item in real(reader, result):
            read.append(trainer.position.step)
            trainer._interrupted = signal.SIGINT  # what the handler does on Ctrl-C
            yield item

    monkeypatch.setattr(evaluate_module, "scored_samples", signalled_after_one)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert read == [6]  # the signal came while the first image was read: the pass ended there, not after 6
    assert trainer.position.step == 6 and not any("val/hmean" in h for h in trainer.state.history)
    _, _, state = read_training_state(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert state["position"]["step"] == 6
    assert not (tmp_path / "run" / "checkpoints" / "best.safetensors").exists()

    monkeypatch.setattr(evaluate_module, "scored_samples", real)
    resumed = Trainer(recipe, tmp_path / "run", resume_from=tmp_path / "run" / "checkpoints" / "last.safetensors")
    resumed.run()
    final = 12 if when == "epoch end" else 6
    assert [h["step"] for h in resumed.state.history if "val/hmean" in h][-1] == final
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").exists()


def test_a_loader_worker_runs_one_opencv_thread_and_leaves_stop_signals_to_the_main_process() -> None:
    script = (
        "import signal, cv2\n"
        "from dbtk.engine.trainer import init_loader_worker\n"
        "cv2.setNumThreads(4)\n"
        "init_loader_worker(0)\n"
        "print(cv2.getNumThreads(), signal.getsignal(signal.SIGTERM) is signal.SIG_IGN, signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["1", "True", "True"], done.stderr


def test_nan_batch_is_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dbtk.data.dataset as dataset_module

    real_collate = dataset_module.collate
    calls = []

    def poisoned(samples):  # noqa: ANN001, ANN202
        batch = real_collate(samples)
        calls.append(1)
        if len(calls) == 2:
            batch["thresh_map"][0, 0, 0] = float("nan")
            batch["images"] = batch["images"].float()
            batch["images"][0, 0, 0, 0] = float("nan")  # also poisons the forward (BatchNorm statistics)
        return batch

    monkeypatch.setattr(dataset_module, "collate", poisoned)
    trainer = Trainer(tiny(), tmp_path / "run")
    trainer.run()
    assert trainer.position.step == 6
    assert int(trainer.state.bad_total.item()) == 1
    assert trainer.state.history[-1]["bad_steps"] == 1
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())


def poison_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch's threshold targets become NaN: every step's loss is non-finite."""
    import dbtk.data.dataset as dataset_module

    real_collate = dataset_module.collate

    def always_nan(samples):  # noqa: ANN001, ANN202
        batch = real_collate(samples)
        batch["thresh_map"][:] = float("nan")
        return batch

    monkeypatch.setattr(dataset_module, "collate", always_nan)


def test_consecutive_bad_steps_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_every_batch(monkeypatch)
    trainer = Trainer(tiny(**{"train.max_bad_steps": 2}), tmp_path / "run")
    with pytest.raises(DbtkError, match="2 consecutive steps had a non-finite loss or gradient"):
        trainer.run()


def test_failed_checkpoint_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import safetensors.torch

    trainer = Trainer(tiny(), tmp_path / "run")
    trainer.run()
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    before = last.read_bytes()

    def disk_full(tensors, filename, metadata=None):  # noqa: ANN001, ANN202
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(DbtkError, match="No space left on device; the previous checkpoint is intact"):
        trainer.save("last", collective=False)  # write again at the same step
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.safetensors", "last.safetensors"]


KILL_DURING_SAVE = """
import sys, time
from pathlib import Path
import safetensors.torch
real_save = safetensors.torch.save_file
saves = []
def slow_save(tensors, filename, metadata=None):
    saves.append(filename)
    if len(saves) == 2:  # second checkpoint: write half a file, then hang until killed
        Path(filename).write_bytes(b"x" * 1000)
        Path(sys.argv[2]).write_text("writing")
        time.sleep(60)
    real_save(tensors, filename, metadata=metadata)
safetensors.torch.save_file = slow_save
from dbtk.cli import main
main(["train", sys.argv[1], "--out", sys.argv[3]])
"""


def test_kill_9_during_checkpoint_write_leaves_previous_loadable(tmp_path: Path) -> None:
    recipe_path = tmp_path / "tiny.toml"
    recipe_path.write_text(TINY.replace("PRECISION", "fp32"))
    script = tmp_path / "kill.py"
    script.write_text(KILL_DURING_SAVE)
    marker, run_dir = tmp_path / "marker", tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(recipe_path), str(marker), str(run_dir)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), "the second checkpoint write never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = run_dir / "checkpoints" / "last.safetensors"
    _, _, state = read_training_state(last)
    assert state["position"]["step"] == 3  # the first checkpoint, intact
    model, _ = load_model(last)
    reference = Trainer(tiny(), tmp_path / "reference", stop_at=3)  # the same run, stopped cleanly at step 3
    with pytest.raises(StopRequested):
        reference.run()
    loaded, expected = model.state_dict(), reference.model.state_dict()
    assert loaded.keys() == expected.keys()
    differ = [k for k in expected if not torch.allclose(loaded[k].double(), expected[k].double(), rtol=0, atol=1e-6)]
    assert differ == [], f"the loaded checkpoint does not hold the step-3 weights: {differ[:5]}"
    resumed = run_dbtk("train", str(recipe_path), "--out", str(run_dir), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _, _, state = read_training_state(last)
    assert state["position"]["step"] == 6


def test_train_cli_dry_run_prints_before_importing_torch(tmp_path: Path) -> None:
    recipe_path = tmp_path / "tiny.toml"
    recipe_path.write_text(TINY.replace("PRECISION", "fp32"))
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dbtk", "train", str(recipe_path), "--dry-run", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "200"}, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    first_line = next(i for i, line in enumerate(lines) if "reading" in line)
    first_torch = next(i for i, line in enumerate(lines) if re.search(r"\|\s+torch$", line.rstrip()))
    assert first_line < first_torch
    assert "12 training images, 6 steps/epoch, 6 steps" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_train_cli_refuses_to_overwrite_and_resumes(tmp_path: Path) -> None:
    recipe_path = tmp_path / "tiny.toml"
    recipe_path.write_text(TINY.replace("PRECISION", "fp32"))
    out = tmp_path / "run"
    first = run_dbtk("train", str(recipe_path), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert {p.name for p in out.iterdir()} >= {"recipe.toml", "metrics.jsonl", "checkpoints", "curves.png"}
    again = run_dbtk("train", str(recipe_path), "--out", str(out))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    missing = run_dbtk("train", str(recipe_path), "--out", str(tmp_path / "other"), "--resume")
    assert missing.returncode == 2 and "nothing to resume" in missing.stderr


def test_stop_at_the_last_step_finishes_the_run(tmp_path: Path) -> None:
    """--stop-at equal to the run's last step is the run's own end: final validation and best.safetensors too."""
    trainer = Trainer(tiny(**{"data.val": "val"}), tmp_path / "run", stop_at=6)
    trainer.run()  # no StopRequested
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").exists()
    assert any("val/hmean" in h and h["step"] == 6 for h in trainer.state.history)


def test_resuming_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    """--resume of a run that already ended (validated at its last step): no second validation, no duplicate log."""
    recipe_path = tmp_path / "tiny.toml"
    recipe_path.write_text(TINY.replace("PRECISION", "fp32").replace("val_every = 0", "val_every = 1").replace('train = "train"', 'train = "train"\nval = "val"'))
    out = tmp_path / "run"
    assert run_dbtk("train", str(recipe_path), "--out", str(out)).returncode == 0
    before = (out / "metrics.jsonl").read_text()
    assert '"val/hmean"' in before
    again = run_dbtk("train", str(recipe_path), "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    assert (out / "metrics.jsonl").read_text() == before


def test_unknown_logger_and_bad_data_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DbtkError, match=r"loggers.0: unknown logger 'jsnl' \(did you mean 'jsonl'\?\)"):
        Trainer(recipes.structure({**recipes.unstructure(tiny()), "loggers": [{"name": "jsnl"}]}), tmp_path)
    broken = recipes.unstructure(tiny())
    broken["data"]["format"] = "icdar2015"
    broken["data"]["train"] = str(tmp_path / "nowhere")
    with pytest.raises(DbtkError, match="data.train: image folder not found"):
        Trainer(recipes.structure(broken), tmp_path)


@pytest.mark.slow
def test_quickstart_learns(tmp_path: Path) -> None:
    """The quickstart recipe (a few minutes on 2 CPU cores): loss falls and validation hmean exceeds 0.5."""
    recipe = recipes.load(REPO / "recipes" / "quickstart.toml")
    trainer = Trainer(recipe, tmp_path / "qs")
    trainer.run()
    train_losses = losses(trainer)
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert trainer.state.best_hmean > 0.5


def test_ctrl_c_saves_last_and_exits_130(tmp_path: Path) -> None:
    recipe_path = tmp_path / "tiny.toml"
    recipe_path.write_text(TINY.replace("PRECISION", "fp32").replace("max_steps = 6", "max_steps = 400"))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dbtk", "train", str(recipe_path), "--out", str(run_dir)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while (not metrics.exists() or not metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "continue with --resume" in stderr and "Traceback" not in stderr
    _, _, state = read_training_state(run_dir / "checkpoints" / "last.safetensors")
    assert 1 <= state["position"]["step"] < 400


def test_tensorboard_logger_names_its_extra(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        from dbtk.loggers.tensorboard import TensorboardLogger

        with pytest.raises(DbtkError, match="needs the tensorboard package") as info:
            TensorboardLogger(tmp_path)
        assert "pip install 'dbtk[tensorboard]'" in info.value.hint
    else:
        pytest.skip("tensorboard is installed")
