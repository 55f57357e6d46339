"""Running the doctor's probes: each in a fresh interpreter (``python -m dbtk.doctor.probe NAME``, the code is in
:mod:`dbtk.doctor.probe`) with a timeout; each prints one JSON object.

A probe that hangs (a wedged driver, a plugin stuck at import) is reported as timed out and never blocks
the others. Probes run in parallel threads, each waiting on its own subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ENV_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS", "CUDA_LAUNCH_BLOCKING", "CUDA_VISIBLE_DEVICES")

#: How a probe is started: a fresh interpreter running the probe module, the probe's name and options as argv.
PROBE_COMMAND = (sys.executable, "-m", "dbtk.doctor.probe")


def run_probe(name: str, *options: str, timeout: float) -> Any:
    """Run ``python -m dbtk.doctor.probe NAME OPTIONS``; a timeout or crash becomes a result, never an exception.

    A fresh interpreter per probe is what lets a hung driver or plugin be abandoned after ``timeout`` seconds.
    """
    try:
        proc = subprocess.run([*PROBE_COMMAND, name, *options], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout": timeout}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"probe exited with {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def torch_probe(timeout: float) -> dict[str, Any]:
    """torch build, CUDA and GPUs; importing torch or initialising CUDA is where a broken driver hangs."""
    return run_probe("torch", timeout=timeout)


def versions_probe(timeout: float) -> dict[str, Any]:
    """torchvision and timm: a torchvision built for another torch fails only when imported."""
    return run_probe("versions", timeout=timeout)


def plugins_probe(timeout: float) -> list[dict[str, Any]] | dict[str, Any]:
    """One row per component; a dict when the probe itself timed out or crashed. Each import gets half the
    probe's time, so one hung plugin is reported by name before the whole probe is abandoned."""
    result = run_probe("plugins", f"--timeout={timeout / 2}", timeout=timeout)
    return result.get("components", result)


def system_probe(run_dir: Path) -> dict[str, Any]:
    """Cheap facts read in-process: CPUs, /dev/shm, free disk, relevant environment variables."""
    info: dict[str, Any] = {"cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    if Path("/dev/shm").is_dir():
        stat = os.statvfs("/dev/shm")
        info["shm_gb"] = stat.f_bavail * stat.f_frsize / 2**30
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path.cwd())
    info["disk_free_gb"] = shutil.disk_usage(existing).free / 2**30
    info["env"] = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    return info


def _recipe_options(recipe_path: str, overrides: tuple[str, ...]) -> list[str]:
    """``--recipe=PATH --set=K=V ...``: the ``=`` form keeps a path or value that starts with '-' an argument."""
    return [f"--recipe={recipe_path}", *(f"--set={override}" for override in overrides)]


def measure_recipe(recipe_path: str, overrides: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """One training step of the recipe at its batch and image size (in a subprocess); see probe.measure_probe."""
    result = run_probe("measure", *_recipe_options(recipe_path, overrides), timeout=timeout)
    if result.get("status") == "timeout":
        return {"error": f"measuring the recipe took longer than {timeout:g} s"}
    return result


def run_recipe(recipe_path: str, overrides: tuple[str, ...], steps: int, timeout: float) -> dict[str, Any]:
    """Train the recipe for ``steps`` steps on its real data (in a subprocess) and report what happened."""
    result = run_probe("run", *_recipe_options(recipe_path, overrides), f"--steps={steps}", timeout=timeout)
    if result.get("status") == "timeout":
        return {"error": f"{steps} training steps took longer than {timeout:g} s"}
    return result
