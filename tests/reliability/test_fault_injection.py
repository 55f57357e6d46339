"""kill -9 at random moments and during checkpoint writes, and a full disk: nothing half-written, nothing lost
beyond the last checkpoint, and ``--resume`` ends exactly where an uninterrupted run does (CPU, bit for bit)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dbtk.io.checkpoint import read_training_state, read_weights
from tests.conftest import REPO
from tests.reliability.conftest import TALLY

RECIPE = """
name = "faults"
seed = 11
[model.decoder]
channels = 16
[data]
format = { name = "synthetic", count = 16, width = 64, height = 64, min_height = 8, max_height = 16 }
train = "train"
image_size = 64
[train]
max_steps = 8
batch_size = 2
precision = "fp32"
workers = 0
log_every = 1
val_every = 0
checkpoint_every = 1
[[loggers]]
name = "jsonl"
"""

#: Patch the checkpoint writer in the child: the Nth write stops halfway (bytes on disk, then hangs) or fails
#: like a full disk. Test-only; the production writer is untouched.
WRITER_PATCH = """
import errno, os, time
import safetensors.torch as st
_calls = [0]
def patched(tensors, filename, metadata=None):
    _calls[0] += 1
    if _calls[0] == {nth}:
        if {mode!r} == "hang":
            data = st.save(tensors, metadata=metadata)
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
            open({marker!r}, "w").close()
            time.sleep(120)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _real(tensors, filename, metadata=metadata)
_real = st.save_file
st.save_file = patched
"""


def start(recipe: Path, out: Path, *extra: str, prelude: str = "", new_session: bool = False) -> subprocess.Popen[str]:
    script = prelude + textwrap.dedent(
        f"""
        import sys
        from dbtk.cli import main
        sys.argv = ["dbtk", "train", {str(recipe)!r}, "--out", {str(out)!r}, "--device", "cpu", *{list(extra)!r}]
        main()
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session)  # its own process group, to signal it whole


def finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def assert_checkpoints_whole(run: Path) -> None:
    """Whatever a kill left, every checkpoint file dbtk would read is complete and loadable."""
    folder = run / "checkpoints"
    for path in folder.glob("*.safetensors") if folder.exists() else []:
        read_weights(path)
        if path.name == "last.safetensors":
            read_training_state(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("faults")
    recipe = folder / "faults.toml"
    recipe.write_text(RECIPE)
    code, err = finish(start(recipe, folder / "reference"))
    assert code == 0, err
    return recipe, read_weights(folder / "reference" / "checkpoints" / "last.safetensors")[0]


def kill_then_resume(recipe: Path, run: Path, kill: str, rng: random.Random) -> None:
    if kill == "during-write":
        marker = run.parent / f"{run.name}.writing"
        process = start(recipe, run, prelude=WRITER_PATCH.format(nth=rng.randint(2, 7), mode="hang", marker=str(marker)))
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the patched write never started"
        assert list((run / "checkpoints").glob(".last.safetensors.*.tmp")), "the half-written temporary file is there"
    else:
        process = start(recipe, run)
        target = rng.randint(0, 7)  # logged steps before the kill; 0 = during start-up
        deadline = time.monotonic() + 120
        while logged_steps(run) < target and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    TALLY["kill -9 injected"] += 1
    assert_checkpoints_whole(run)
    resume = ["--resume"] if (run / "checkpoints" / "last.safetensors").exists() else []
    code, err = finish(start(recipe, run, *resume))
    assert code == 0, err
    assert not list((run / "checkpoints").glob(".*.tmp")), "stale temporary files are cleaned up on resume"


@pytest.mark.parametrize("kill", ["random"] * 6 + ["during-write"] * 4)
def test_kill_nine_then_resume_matches_uninterrupted(reference: tuple[Path, dict[str, torch.Tensor]], kill: str,
                                                     tmp_path: Path, request: pytest.FixtureRequest) -> None:
    recipe, expected = reference
    rng = random.Random(request.node.callspec.id)
    run = tmp_path / "run"
    kill_then_resume(recipe, run, kill, rng)
    got = read_weights(run / "checkpoints" / "last.safetensors")[0]
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    steps = [int(line.split(",")[0].split(":")[1]) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_disk_full_keeps_previous_checkpoint(reference: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    recipe, _ = reference
    run = tmp_path / "run"
    code, err = finish(start(recipe, run, prelude=WRITER_PATCH.format(nth=3, mode="enospc", marker="")))
    TALLY["disk full injected"] += 1
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("•")]
    assert code == 2 and "Traceback" not in err, err
    assert lines[0].startswith("error: could not write") and "No space left on device" in lines[0] and "previous checkpoint is intact" in lines[0]
    _, _, state = read_training_state(run / "checkpoints" / "last.safetensors")
    assert state["position"]["step"] == 2  # the last good write
    assert not list((run / "checkpoints").glob(".*.tmp"))
