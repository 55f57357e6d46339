"""Running the doctor's probes: each in a fresh interpreter (``python -m dbtk.doctor.probe NAME``, the code is in
:mod:`dbtk.doctor.probe`) with a timeout; each prints one JSON object.

A probe that hangs (a wedged driver, a plugin stuck at import) is reported as timed out, and one killed by a
signal (SIGILL, SIGSEGV) as crashed, each with the stage it was in; neither blocks the others. Probes that use the
GPU run one at a time (:func:`run_jobs`): the memory measurement fills the GPU, which would make a concurrent
probe's timings and free-memory readings meaningless; the CPU-only probes run beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from dbtk.doctor.probe import STAGE_PREFIX

ENV_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS", "CUDA_LAUNCH_BLOCKING", "CUDA_VISIBLE_DEVICES")

#: How a probe is started: a fresh interpreter running the probe module, the probe's name and options as argv.
PROBE_COMMAND = (sys.executable, "-m", "dbtk.doctor.probe")

#: Windows reports a crashed process by its NTSTATUS code, not a signal.
WINDOWS_CRASHES = {0xC000001D: "SIGILL", 0xC0000005: "SIGSEGV"}

T = TypeVar("T")


def run_probe(name: str, *options: str, timeout: float) -> Any:
    """Run ``python -m dbtk.doctor.probe NAME OPTIONS``; a timeout, crash or unreadable output becomes a result,
    never an exception. A fresh interpreter per probe is what lets a hung driver or plugin be abandoned after
    ``timeout`` seconds, and a crash in native code be reported instead of taking the doctor with it."""
    try:
        proc = subprocess.run([*PROBE_COMMAND, name, *options], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return {"status": "timeout", "timeout": timeout, **_stage(stderr)}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            return {"error": f"the probe printed no JSON result: {lines[-1][:200]}"}
    crash = _signal_name(proc.returncode)
    if crash:
        return {"crash": crash, **_stage(proc.stderr)}
    messages = [line for line in proc.stderr.strip().splitlines() if not line.startswith(STAGE_PREFIX)]
    return {"error": f"probe exited with {proc.returncode}: {(messages or ['no output'])[-1]}"}


def _stage(stderr: str) -> dict[str, str]:
    """The last stage the probe announced on stderr (see :data:`dbtk.doctor.probe.STAGE_PREFIX`), if any."""
    stages = [line[len(STAGE_PREFIX):] for line in stderr.splitlines() if line.startswith(STAGE_PREFIX)]
    return {"stage": stages[-1]} if stages else {}


def _signal_name(returncode: int) -> str | None:
    """``SIGSEGV`` for a process killed by signal 11 (return code -11), or for its Windows status code."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return WINDOWS_CRASHES.get(returncode & 0xFFFFFFFF)


def run_jobs(gpu_jobs: list[tuple[str, Callable[[], T]]], cpu_jobs: list[tuple[str, Callable[[], T]]]) -> Iterator[tuple[str, T, list[str]]]:
    """Run the jobs and yield ``(name, result, names still pending)`` as each finishes.

    ``gpu_jobs`` run one after another, in order (the next starts when the previous has finished); ``cpu_jobs``
    each run at once, beside them. A job's exception is raised here, when its turn to be yielded comes.
    """
    queued = list(gpu_jobs)
    with ThreadPoolExecutor(max_workers=len(cpu_jobs) + 1) as pool:
        running: dict[Future[T], str] = {pool.submit(job): name for name, job in cpu_jobs}
        gpu_names = {name for name, _ in gpu_jobs}

        def start_next_gpu_job() -> None:
            if queued:
                name, job = queued.pop(0)
                running[pool.submit(job)] = name

        start_next_gpu_job()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                if name in gpu_names:
                    start_next_gpu_job()
                yield name, future.result(), [*running.values(), *(queued_name for queued_name, _ in queued)]


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
