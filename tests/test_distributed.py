"""DDP through torchrun on CPU (gloo): the same parameters as one process, resume, and clean failures."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dbtk.io.checkpoint import read_weights
from tests.conftest import REPO, run_dbtk

RECIPE = """
name = "ddp"
seed = 5
[model.decoder]
channels = 16
[data]
format = { name = "synthetic", count = 16, val_count = 2, width = 64, height = 64, min_height = 8, max_height = 16 }
train = "train"
image_size = 64
[train]
max_steps = 4
batch_size = 2
accumulate = 1
precision = "fp32"
lr = 1e-3
workers = 0
log_every = 1
val_every = 0
checkpoint_every = 0
dist_timeout = 60
[eval]
long_side = 64
[[loggers]]
name = "jsonl"
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "ddp.toml"
    path.write_text(RECIPE)
    return path


def train(recipe: Path, out: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    result = run_dbtk("train", str(recipe), "--out", str(out), "--device", "cpu", "--nproc", str(nproc), *args,
                      env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    return read_weights(run / "checkpoints" / "last.safetensors")[0]


def logged_losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


def test_two_ranks_equal_one_process_with_twice_the_batches(recipe: Path, tmp_path: Path) -> None:
    """2 ranks × batch 2 is one process × batch 2 × accumulate 2: same micro-batches, same averaged gradient."""
    ddp = train(recipe, tmp_path / "ddp")
    assert "× 2 processes" in ddp.stderr and ddp.stderr.count("reading") == 1  # only rank 0 talks
    train(recipe, tmp_path / "single", "--set", "train.accumulate=2", nproc=1)
    # Every checkpoint under DDP first checks that the ranks' parameters agree exactly (require_in_sync).
    a, b = last_weights(tmp_path / "ddp"), last_weights(tmp_path / "single")
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point() and "running" not in key:  # BatchNorm running stats are per-rank buffers
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(torch.tensor(logged_losses(tmp_path / "ddp")), torch.tensor(logged_losses(tmp_path / "single")), rtol=1e-5, atol=1e-6)


def test_resume_under_ddp(recipe: Path, tmp_path: Path) -> None:
    train(recipe, tmp_path / "straight")
    stopped = train(recipe, tmp_path / "split", "--stop-at", "2")
    assert "stopped after step 2" in stopped.stdout
    train(recipe, tmp_path / "split", "--resume")
    a, b = last_weights(tmp_path / "straight"), last_weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert logged_losses(tmp_path / "straight") == logged_losses(tmp_path / "split")
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ranks_with_different_recipes_fail_clearly(recipe: Path, tmp_path: Path) -> None:
    port = _free_port()
    procs = []
    for rank, lr in ((0, "1e-3"), (1, "2e-3")):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "NO_COLOR": "1", "COLUMNS": "200"}
        command = [sys.executable, "-m", "dbtk", "train", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu", "--set", f"train.lr={lr}"]
        procs.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    for _out, err in outputs:
        assert "rank 1 resolved a different recipe than rank 0: 'lr = 0.002' vs 'lr = 0.001'" in err and "Traceback" not in err


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found + [grand for child in found for grand in _children(child)]


def _rank_of(pid: int) -> str | None:
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((v.split(b"=", 1)[1].decode() for v in variables if v.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds worker processes through /proc")
def test_a_crashed_rank_stops_the_others(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dbtk", "train", str(recipe), "--out", str(out), "--device", "cpu", "--nproc", "2",
               "--set", "train.max_steps=100000"]
    launcher = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.5)
    assert metrics.exists(), "training never started"
    workers = {_rank_of(pid): pid for pid in _children(launcher.pid) if _rank_of(pid) is not None}
    os.kill(workers["1"], signal.SIGKILL)
    started = time.monotonic()
    try:
        _, err = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0 and time.monotonic() - started < 90
    # Rank 0 either noticed first (one error line naming the cause) or torchrun stopped it: never a hang.
    assert "rank 0 lost contact with the other training processes" in err or "Signal 15 (SIGTERM) received" in err
    time.sleep(1)
    assert not Path(f"/proc/{workers['0']}").exists() or "zombie" in Path(f"/proc/{workers['0']}/status").read_text()


def test_sigterm_to_the_launcher_saves_every_rank_and_exits_143(recipe: Path, tmp_path: Path) -> None:
    """A scheduler's ``kill`` reaches ``dbtk train --nproc`` alone, not torchrun: the launcher passes it on (it used
    to SIGKILL torchrun, losing the ranks' steps), the ranks agree at the next logging step, save and end."""
    from dbtk.io.checkpoint import read_training_state

    out = tmp_path / "run"
    command = [sys.executable, "-m", "dbtk", "train", str(recipe), "--out", str(out), "--device", "cpu", "--nproc", "2",
               "--set", "train.max_steps=100000"]
    launcher = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)  # no terminal's Ctrl-C here
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.5)
    assert metrics.exists(), "training never started"
    launcher.send_signal(signal.SIGTERM)
    try:
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 128 + signal.SIGTERM, err
    assert "warning: terminated by SIGTERM at step" in err and "Traceback" not in err, err
    _, _, state = read_training_state(out / "checkpoints" / "last.safetensors")
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert state["position"]["step"] >= max(logged) >= 3  # saved at (or after) the last logged step: nothing lost
