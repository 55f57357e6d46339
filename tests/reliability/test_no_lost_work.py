"""Nothing is lost before a checkpoint: every epoch end and every validation is preceded by ``last`` on disk, a
validation problem (bad images, bad labels, a crash inside it) never ends a training run, and SIGTERM saves like
Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from dbtk.io.checkpoint import read_training_state
from tests.data_fixtures import broken_dataset
from tests.reliability.conftest import TALLY
from tests.reliability.test_fault_injection import finish, start

pytestmark = pytest.mark.reliability

#: 16 images, batch 2: 8 steps per epoch; no step-based checkpoints at all (the quickstart's setting).
RECIPE = """
name = "epochs"
seed = 3
[model.decoder]
channels = 16
[data]
format = {{ name = "synthetic", count = 16, val_count = 2, width = 64, height = 64, min_height = 8, max_height = 16 }}
train = "train"
val = {val}
image_size = 64
[train]
epochs = 4
batch_size = 2
precision = "fp32"
workers = 0
log_every = 4
val_every = {val_every}
checkpoint_every = 0
[eval]
long_side = 64
[[loggers]]
name = "jsonl"
"""

#: Run inside the child before training: SIGKILL the process at a chosen moment.
KILL_AT_EPOCH = """
import os, signal
from dbtk.engine import trainer as _t
_iter = _t.EpochBatches.__iter__
def _iter_or_die(self):
    if self.epoch == {epoch}:
        os.kill(os.getpid(), signal.SIGKILL)
    return _iter(self)
_t.EpochBatches.__iter__ = _iter_or_die
"""

KILL_IN_VALIDATION = """
import os, signal
from dbtk.infer import evaluate as _e
def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
_e.evaluate_detector = _die
"""

FAIL_IN_VALIDATION = """
from dbtk.infer import evaluate as _e
def _fail(*args, **kwargs):
    raise RuntimeError("something inside validation went wrong")
_e.evaluate_detector = _fail
"""


def write_recipe(folder: Path, val: str = '"val"', val_every: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r.toml"
    path.write_text(RECIPE.format(val=val, val_every=val_every))
    return path


def test_kill_after_two_epochs_leaves_the_epoch_end_checkpoint(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, val_every=0)
    code, err = finish(start(recipe, tmp_path / "run", prelude=KILL_AT_EPOCH.format(epoch=2)))
    TALLY["kill -9 injected"] += 1
    assert code == -signal.SIGKILL, err
    _, _, state = read_training_state(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert state["position"] == {"step": 16, "epoch": 2, "batch": 0}  # two epochs of 8 steps, nothing lost
    code, err = finish(start(recipe, tmp_path / "run", "--resume"))
    assert code == 0, err


def test_kill_during_validation_loses_nothing(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    code, err = finish(start(recipe, tmp_path / "run", prelude=KILL_IN_VALIDATION))
    TALLY["kill -9 injected"] += 1
    assert code == -signal.SIGKILL, err
    _, _, state = read_training_state(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert state["position"]["step"] == 8  # the step validated at epoch 1's end was on disk first


def test_a_failing_validation_never_ends_training(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    code, err = finish(start(recipe, tmp_path / "run", prelude=FAIL_IN_VALIDATION))
    assert code == 0, err
    assert "validation at step 8 failed and was skipped" in err and "Traceback" not in err
    _, _, state = read_training_state(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert state["position"]["step"] == 32


def test_bad_validation_images_and_labels_are_counted_and_skipped(tmp_path: Path) -> None:
    damaged, _ = broken_dataset(tmp_path / "damaged")  # NaN, out-of-bounds, degenerate labels, truncated/corrupt images
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        RECIPE.format(val=json.dumps(str(damaged)), val_every=2).replace(
            'format = { name = "synthetic", count = 16, val_count = 2, width = 64, height = 64, min_height = 8, max_height = 16 }\ntrain = "train"',
            f'format = "icdar2015"\ntrain = {json.dumps(str(damaged))}',
        ).replace("epochs = 4", "epochs = 2")
    )
    code, err = finish(start(recipe, tmp_path / "run"))
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validations = [line for line in lines if "val/hmean" in line]
    assert validations, lines
    assert validations[-1]["val/skipped_images"] == 3  # truncated, corrupt, and the page with no usable polygon
    assert validations[-1]["val/images"] == 8


def test_sigterm_saves_like_ctrl_c_and_resume_continues(tmp_path: Path) -> None:
    """``kill PID`` (a batch scheduler's time limit, ``docker stop``) mid-epoch, with no step checkpoints: the step
    under way finishes, ``last`` is written, the run says so and exits 143; --resume continues from that step."""
    recipe = write_recipe(tmp_path, val_every=0)
    recipe.write_text(recipe.read_text().replace("epochs = 4", "epochs = 100"))  # far longer than the test waits
    run = tmp_path / "run"
    process = start(recipe, run)
    deadline = time.monotonic() + 180
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    code, err = finish(process)
    TALLY["SIGTERM injected"] += 1
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "error:" not in err, err
    said = re.search(r"warning: terminated by SIGTERM at step (\d+): saved (\S+); continue with --resume", err)
    assert said is not None, err
    step = int(said.group(1))
    _, _, state = read_training_state(run / "checkpoints" / "last.safetensors")
    assert state["position"]["step"] == step >= 4  # the step under way when the signal came: nothing lost

    code, err = finish(start(recipe, run, "--resume", "--stop-at", str(step + 2)))
    assert code == 0, err
    _, _, state = read_training_state(run / "checkpoints" / "last.safetensors")
    assert state["position"]["step"] == step + 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice: the resumed run started after the saved one


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_the_whole_process_group_saves_with_loader_workers(tmp_path: Path, sig: signal.Signals) -> None:
    """``timeout``, a batch scheduler or a terminal signal the whole process group, loader workers included: the
    workers leave the signal to the main process, which saves and exits 128 + the signal — no DataLoader error."""
    import os

    recipe = write_recipe(tmp_path, val_every=0)
    recipe.write_text(recipe.read_text().replace("epochs = 4", "epochs = 100").replace("workers = 0", "workers = 2"))
    run = tmp_path / "run"
    process = start(recipe, run, new_session=True)
    deadline = time.monotonic() + 180
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.2)
    os.killpg(process.pid, sig)
    code, err = finish(process)
    TALLY["SIGTERM injected" if sig == signal.SIGTERM else "SIGINT to the process group"] += 1
    assert code == 128 + sig, err
    assert "Traceback" not in err and "error:" not in err and "DataLoader" not in err, err
    step = int(re.search(r"at step (\d+): saved", err).group(1))
    _, _, state = read_training_state(run / "checkpoints" / "last.safetensors")
    assert state["position"]["step"] == step >= 4


SIGTERM_AT_START_UP = """
import os, signal
from dbtk.engine import trainer as _t
_init = _t.Trainer.__init__
def _init_then_term(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    _init(self, *args, **kwargs)
_t.Trainer.__init__ = _init_then_term
"""


def test_sigterm_during_start_up_is_one_line_and_143(tmp_path: Path) -> None:
    """Before training starts there is nothing to save: SIGTERM ends the command like Ctrl-C, with one line."""
    code, err = finish(start(write_recipe(tmp_path), tmp_path / "run", prelude=SIGTERM_AT_START_UP))
    TALLY["SIGTERM injected"] += 1
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.count("error:") == 1 and "error: terminated by SIGTERM" in err, err
