"""The doctor's probes as a program: ``python -m dbtk.doctor.probe NAME [options]`` prints one JSON object.

:mod:`dbtk.doctor.probes` runs each probe in a fresh interpreter with a timeout, so a hung driver or plugin is
reported instead of hanging the doctor. Arguments arrive as argv (a recipe path is never pasted into code), and
the code is ordinary, importable Python that linters, type checkers and coverage see.

Probes:

- ``torch``: the torch build, why CUDA is unavailable, each GPU, and a GPU-vs-CPU smoke test.
- ``versions``: torchvision and timm import.
- ``plugins [--timeout S]``: every registered component imports (each within S seconds).
- ``measure --recipe R [--set K=V]...``: the trainer's own step at the recipe's batch and image size.
- ``run --recipe R [--set K=V]... --steps N``: N training steps of the recipe on its real data.

torch and the engine are imported inside the probes, never at module level: the ``torch`` probe must report a
torch that fails to import as a result, not die with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from dbtk.engine.state import TrainingState
    from dbtk.engine.trainer import Trainer
    from dbtk.recipe import Recipe

Result = dict[str, Any]


def main(argv: Sequence[str] | None = None) -> None:
    """Run one probe and print its result as one JSON line, the only thing this process writes to stdout.

    Whatever the probe's libraries print (a chatty plugin, a torch warning) goes to stderr instead, so the doctor
    can always parse stdout.
    """
    args = _parser().parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        result = args.probe(args)
    print(json.dumps(result), flush=True)


def _parser() -> argparse.ArgumentParser:
    """One subcommand per probe, so each accepts exactly its own options."""
    parser = argparse.ArgumentParser(prog="python -m dbtk.doctor.probe", description="Run one dbtk doctor probe; print JSON.")
    names = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    names.add_parser("torch", help="torch build, CUDA, GPUs, smoke test").set_defaults(probe=torch_probe)
    names.add_parser("versions", help="torchvision and timm").set_defaults(probe=versions_probe)
    plugins = names.add_parser("plugins", help="every registered component imports")
    plugins.add_argument("--timeout", type=float, default=30.0, help="seconds each component's import may take")
    plugins.set_defaults(probe=plugins_probe)
    _recipe_options(names.add_parser("measure", help="one training step at the recipe's batch and image size")).set_defaults(probe=measure_probe)
    run = _recipe_options(names.add_parser("run", help="train the recipe for a few steps on its real data"))
    run.add_argument("--steps", type=int, required=True, help="optimizer steps to train")
    run.set_defaults(probe=recipe_run_probe)
    return parser


def _recipe_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--recipe`` and ``--set``, read exactly as ``dbtk train`` reads them."""
    parser.add_argument("--recipe", required=True, help="recipe file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    return parser


def _first_line(exc: BaseException) -> str:
    """The message's first line: CUDA and cuDNN errors carry pages of context the rules do not need."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# ------------------------------------------------------------------------------------------------ torch
#: The probe announces each stage on stderr before entering it, so a process killed by a signal (SIGILL, SIGSEGV)
#: or a timeout still tells :func:`dbtk.doctor.probes.run_probe` where it was.
STAGE_PREFIX = "dbtk-probe stage: "
IMPORTING_TORCH = "importing torch"
_stage_now = ""

#: Free GPU memory below this share of the total means other processes hold the GPU (rules warn; the probe then
#: asks nvidia-smi who they are).
LOW_FREE_SHARE = 0.25

#: Runs a command (``nvidia-smi ...``) and returns its stdout, or None when it is missing, fails or hangs.
Runner = Callable[[list[str]], str | None]


def _stage(name: str) -> None:
    """Announce the stage the probe enters. A stage that uses the GPU names it ('GPU' or 'CUDA'): a crash there
    is read as the driver's (:func:`dbtk.doctor.rules.crash_finding`)."""
    global _stage_now
    _stage_now = name
    print(f"{STAGE_PREFIX}{name}", file=sys.stderr, flush=True)


def torch_probe(_args: argparse.Namespace) -> Result:
    """Import torch (a failure is the result, not a crash of the probe), then report on it."""
    _stage(IMPORTING_TORCH)
    try:
        import torch
    except Exception as exc:  # a broken install (a wheel for another Python, missing CUDA libraries) is the finding
        return {"import_error": f"{type(exc).__name__}: {_first_line(exc)}"}
    return torch_report(torch)


def torch_report(torch: Any, smoke: Callable[[Any], Result] | None = None, run: Runner | None = None) -> Result:
    """The torch build, the driver and, when CUDA is unusable, the driver's own reason; with CUDA, each GPU and a
    smoke test.

    ``torch`` is passed in (and ``smoke``, ``run`` for the smoke test and ``nvidia-smi``) so that the tests run
    this very code against a simulated ``torch.cuda`` — real cards, real wheels' arch lists, failing queries —
    on machines without a GPU (tests/fake_cuda.py).
    """
    run = run or _run_command
    out: Result = {"env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES",) if k in os.environ}}
    _stage("reading the torch build")
    out.update(_build(torch))
    _stage("reading the CUDA driver's version")
    out.update(_driver(torch, run))
    _stage("initialising CUDA")
    out["cuda_available"] = bool(torch.cuda.is_available())
    if not out["cuda_available"] and out["cuda_version"]:
        out.update(_cuda_init_error(torch.cuda))
        if "driver_cuda" not in out:  # "The NVIDIA driver on your system is too old (found version 11040)"
            found = re.search(r"found version (\d+)", out.get("cuda_init_error", ""))
            if found:
                out["driver_cuda"] = _cuda_version_text(int(found[1]))
    if out["cuda_available"]:
        try:
            out.update(_gpus(torch, run))
        except Exception as exc:  # a failing query is a finding about CUDA, never "torch does not import"
            out["cuda_error"] = {"stage": _stage_now, "message": f"{type(exc).__name__}: {_first_line(exc)}"}
            return out
        _stage("running the GPU smoke test")
        out.update((smoke or _smoke_test)(torch))
    return out


def _build(torch: Any) -> Result:
    """Versions, and which CUDA builds of this torch release exist with which arches (torch's own table, where
    this torch has one): the doctor's install advice names only builds that exist."""
    import platform
    from importlib import metadata

    cudnn = torch.backends.cudnn
    releases = getattr(torch.cuda, "PYTORCH_RELEASES_CODE_CC", None) or {}
    host = "aarch64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"
    try:
        torchvision = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        torchvision = None
    return {
        "version": torch.__version__, "cuda_version": torch.version.cuda, "hip_version": getattr(torch.version, "hip", None),
        "cudnn_version": cudnn.version() if cudnn.is_available() else None, "torchvision_version": torchvision,
        "release_builds": {cuda: sorted(by_host.get(host, ())) for cuda, by_host in releases.items()} or None,
    }


def _driver(torch: Any, run: Runner) -> Result:
    """The driver's version (``nvidia-smi``: working means a driver is loaded) and the newest CUDA it supports
    (what ``cuDriverGetVersion`` says)."""
    listing = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    out: Result = {"nvidia_smi": listing is not None}
    if listing and listing.split():
        out["driver_version"] = listing.split()[0]
    version = _driver_cuda_version(torch)
    if version:
        out["driver_cuda"] = _cuda_version_text(version)
    return out


def _driver_cuda_version(torch: Any) -> int | None:
    """``cuDriverGetVersion`` (12040 for CUDA 12.4): from torch where it exposes it, else from libcuda itself,
    which answers without initialising CUDA; None without a driver."""
    getter = getattr(torch._C, "_cuda_getDriverVersion", None)
    if getter is not None:
        try:
            return int(getter()) or None
        except Exception:  # noqa: BLE001 - no driver: the version is unknown, not an error
            return None
    import ctypes

    try:
        libcuda = ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    return version.value if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def _cuda_version_text(version: int) -> str:
    """12040 → "12.4" (CUDA encodes major * 1000 + minor * 10)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _run_command(command: list[str]) -> str | None:
    import subprocess

    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):  # not installed, or hung
        return None
    return proc.stdout if proc.returncode == 0 else None


def _cuda_init_error(cuda: Any) -> Result:
    """A CUDA build without CUDA: initialising it explicitly makes the driver say why (too old, none, hidden)."""
    try:
        cuda.init()
    except Exception as exc:
        return {"cuda_init_error": _first_line(exc)}
    return {}


def _gpus(torch: Any, run: Runner) -> Result:
    """Arch list, each GPU, who holds the memory of nearly full GPUs, and NCCL."""
    cuda = torch.cuda
    _stage("reading the arch list")
    out: Result = {"arch_list": list(cuda.get_arch_list())}
    _stage("counting GPUs")
    out["devices"] = [_device(cuda, index) for index in range(cuda.device_count())]
    low = [d for d in out["devices"] if "free_gb" in d and d["free_gb"] < LOW_FREE_SHARE * d["total_gb"]]
    if low:
        _stage("listing GPU processes")
        listing = run(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,process_name,used_memory", "--format=csv,noheader,nounits"])
        for device in low:
            device["processes"] = gpu_processes(listing or "", device.get("uuid"))
    _stage("checking NCCL")
    out["nccl_available"] = bool(torch.distributed.is_available() and torch.distributed.is_nccl_available())
    return out


def _device(cuda: Any, index: int) -> Result:
    """One GPU's properties, then its free memory: each query may fail on its own (an exclusive-process GPU held
    by another process, a GPU too full for a context), and the failure is recorded, not raised."""
    _stage(f"querying GPU {index}")
    try:
        properties = cuda.get_device_properties(index)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {_first_line(exc)}"}
    device: Result = {"name": properties.name, "capability": [properties.major, properties.minor], "total_gb": properties.total_memory / 2**30,
                      "bf16": native_bf16(cuda, index, properties.major), "mig": "MIG" in properties.name,
                      "uuid": str(getattr(properties, "uuid", "") or "") or None}
    _stage(f"reading free memory of GPU {index}")
    try:
        device["free_gb"] = cuda.mem_get_info(index)[0] / 2**30
    except Exception as exc:
        device["memory_error"] = f"{type(exc).__name__}: {_first_line(exc)}"
    return device


def native_bf16(cuda: Any, index: int, major: int) -> bool:
    """bf16 in hardware, not emulated: ``is_bf16_supported()`` alone says True on a T4 or V100, which then run bf16
    without cuDNN kernels. Torch before ``including_emulation`` existed: compute capability 8.0 or newer."""
    try:
        with cuda.device(index):
            return bool(cuda.is_bf16_supported(including_emulation=False))
    except TypeError:
        return major >= 8


def gpu_processes(listing: str, uuid: str | None) -> list[Result]:
    """``nvidia-smi --query-compute-apps`` CSV lines → the processes on the GPU with ``uuid`` (all of them when the
    uuid is unknown). nvidia-smi writes ``GPU-<uuid>``; torch's uuid lacks the prefix."""
    processes = []
    for line in listing.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 4 or not fields[1].isdigit():
            continue
        gpu, pid, name, used = fields
        if uuid and gpu.removeprefix("GPU-") != uuid.removeprefix("GPU-"):
            continue
        used_gb = float(used) / 1024 if used.replace(".", "", 1).isdigit() else 0.0
        processes.append({"pid": int(pid), "name": Path(name).name, "used_gb": used_gb})
    return processes


def _smoke_test(torch: Any) -> Result:
    """Conv forward/backward and matmul on the GPU against the CPU: a broken driver or cuDNN fails here first."""
    try:
        torch.manual_seed(0)
        images, weight, matrix = torch.randn(64, 3, 32, 32), torch.randn(8, 3, 3, 3), torch.randn(256, 256)
        cpu, gpu = (_conv_and_matmul(torch.nn.functional.conv2d, images, weight, matrix, device) for device in ("cpu", "cuda"))
        return {"smoke_max_diff": max(float((c - g).abs().max() / (c.abs().max() + 1e-6)) for c, g in zip(cpu, gpu, strict=True))}
    except Exception as exc:
        return {"smoke_error": f"{type(exc).__name__}: {_first_line(exc)}"}


def _conv_and_matmul(conv2d: Callable[..., torch.Tensor], images: torch.Tensor, weight: torch.Tensor, matrix: torch.Tensor,
                     device: str) -> tuple[torch.Tensor, ...]:
    weight = weight.detach().to(device).requires_grad_()  # a fresh leaf per device, so each has its own .grad
    output = conv2d(images.to(device), weight, padding=1)
    output.square().mean().backward()
    product = matrix.to(device) @ matrix.to(device)
    return output.detach().float().cpu(), weight.grad.float().cpu(), product.float().cpu()


# ------------------------------------------------------------------------------------------------ libraries, plugins
def versions_probe(_args: argparse.Namespace) -> Result:
    """torchvision and timm versions, or why each fails to import (a torchvision built for another torch)."""
    import importlib

    out: Result = {}
    for name in ("torchvision", "timm"):
        try:
            out[name] = {"version": importlib.import_module(name).__version__}
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {_first_line(exc)}"}
    return out


def plugins_probe(args: argparse.Namespace) -> Result:
    """Import every registered component; each import is limited to ``--timeout`` seconds."""
    from dbtk.registry import check_entry, registry

    rows = []
    for entry in registry.entries():
        status = check_entry(registry, entry, args.timeout)
        rows.append({"group": entry.kind, "name": entry.name, "distribution": entry.dist, "status": status.status, "detail": status.detail})
    return {"components": rows}


# ------------------------------------------------------------------------------------------------ --recipe: measure
def measure_probe(args: argparse.Namespace) -> Result:
    """One training step of the recipe, run by the trainer itself (channels-last, compile, precision, optimizer):
    seconds per step on the CPU; on CUDA, which of batch 1, 2, B and 2B fit and the peak memory at B."""
    from dbtk import recipe as recipes
    from dbtk.engine.trainer import Trainer

    from dbtk.io.checkpoint import without_pretrained

    recipe = _on_synthetic_images(recipes.load(args.recipe, args.overrides))
    _stage("looking for the encoder's pretrained weights")
    weights = pretrained_weights(recipe)
    recipe = without_pretrained(recipe)  # the step takes as long from random weights, and the doctor never downloads
    train = recipe.train
    with tempfile.TemporaryDirectory() as folder:  # the run folder: nothing is written there without Trainer.run
        _stage("building the trainer (and initialising CUDA)")
        trainer = Trainer(recipe, Path(folder))
        _stage(f"measuring training steps on the {_where(trainer)}")
        out: Result = {"device": trainer.device.type, "batch_size": train.batch_size, "accumulate": train.accumulate, "precision": train.precision,
                       "weights": weights}
        if trainer.device.type == "cuda":
            out.update(_memory_fit(trainer))
        else:
            out["seconds_per_step"] = _seconds_per_step(trainer)
    return out


def pretrained_weights(recipe: Recipe) -> Result:
    """Whether the built-in timm encoder's ``pretrained`` weights load without a network: none asked for, a local
    file (present or not), or published weights (cached as safetensors, cached as a pickle only, or missing, and
    whether the hub may be reached). Reads the cache only: nothing is downloaded."""
    import inspect

    from dbtk.errors import DbtkError
    from dbtk.models import weights as hub
    from dbtk.models.encoders import TimmEncoder

    encoder = recipe.model.encoder
    pretrained = encoder.params.get("pretrained")
    if not pretrained or encoder.name.rpartition(":")[2] != "timm":
        return {"source": "none"}
    arch = encoder.params.get("arch", inspect.signature(TimmEncoder).parameters["arch"].default)
    try:
        source = hub.pretrained_source(arch, pretrained)
    except DbtkError as exc:
        return {"source": "error", "message": exc.message, "hint": exc.hint or ""}
    if isinstance(source, Path):
        return {"source": "file", "path": str(source), "available": source.is_file()}
    pickled = source.pickled()
    return {"source": "hub", "tag": source.tag, "cache": str(hub.hub_cache()), "available": source.cached() is not None,
            "pickled": str(pickled) if pickled else None, "offline": hub.offline()}


def _where(trainer: Trainer) -> str:
    """The trainer's device as a stage names it: a stage that uses the GPU says so (rules.crash_finding reads it)."""
    return "GPU" if trainer.device.type == "cuda" else trainer.device.type.upper()


def _on_synthetic_images(recipe: Recipe) -> Recipe:
    """The recipe with its data replaced by synthetic images of its training size, and nothing logged.

    The measurement needs batches of the right shape, not the user's data, so it works before the data is in
    place (``--steps`` trains on the real data). The set holds 2B images (batch 2B is measured on CUDA) and at
    least one optimizer step's worth, which the trainer requires.
    """
    import attrs

    from dbtk import recipe as recipes

    side = recipe.data.crop or recipe.data.image_size
    count = recipe.train.batch_size * max(2, recipe.train.accumulate)
    images = recipes.Component("dbtk:synthetic", {"count": count, "width": side, "height": side})
    data = attrs.evolve(recipe.data, format=images, train=recipes.Split("measure"), val=None, cache="off")
    return attrs.evolve(recipe, data=data, loggers=[])


def _batch(trainer: Trainer, size: int) -> dict[str, torch.Tensor]:
    """The first ``size`` samples of the trainer's dataset, collated as the training loader collates them."""
    from dbtk.data.dataset import collate

    batch = collate([trainer.dataset[index] for index in range(size)])
    del batch["skipped"], batch["repairs"]  # bookkeeping the loop takes out before the step
    return batch


def _step(trainer: Trainer, batch: dict[str, torch.Tensor]) -> None:
    """One optimizer step on one micro-batch, exactly as the training loop runs it."""
    trainer.train_step([batch])


def _seconds_per_step(trainer: Trainer) -> float:
    """The second step's time: the first one also allocates optimizer state (and compiles, when asked)."""
    batch = _batch(trainer, trainer.recipe.train.batch_size)
    _step(trainer, batch)
    start = time.perf_counter()
    _step(trainer, batch)
    return time.perf_counter() - start


def _memory_fit(trainer: Trainer) -> Result:
    """Which of batch 1, 2, B and 2B fit on the GPU, and the peak memory of a step at the recipe's batch B: the
    trainer's own step (its model, memory layout, precision and optimizer), at each size in turn."""
    import torch

    device, batch_size = trainer.device, trainer.recipe.train.batch_size
    index = device.index if device.index is not None else torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    out: Result = {"total_gb": properties.total_memory / 2**30, "free_gb": torch.cuda.mem_get_info(index)[0] / 2**30,
                   "bf16_supported": native_bf16(torch.cuda, index, properties.major)}

    def peak_gb(size: int) -> float:
        batch = _batch(trainer, size)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            _step(trainer, batch)
            torch.cuda.synchronize(device)
        finally:
            trainer.optimizer.zero_grad(set_to_none=True)  # a failed step leaves gradients behind
        return torch.cuda.max_memory_allocated(device) / 2**30

    out.update(fit_batches(peak_gb, sorted({1, 2, batch_size, 2 * batch_size}), batch_size))
    return out


def fit_batches(peak_gb: Callable[[int], float], sizes: list[int], batch_size: int) -> Result:
    """Run ``peak_gb(size)`` (one training step) for each size: out of memory means that size does not fit; any
    other error (cuDNN, a missing kernel) is no matter of size, so it ends the measurement as ``step_error``."""
    out: Result = {}
    fits: dict[int, bool] = {}
    for size in sizes:
        try:
            peak = peak_gb(size)
        except Exception as exc:
            if not is_out_of_memory(exc):
                out["step_error"] = {"batch": size, "message": f"{type(exc).__name__}: {_first_line(exc)[:200]}"}
                break
            fits[size] = False
            out.setdefault("oom_message", _first_line(exc)[:200])
            continue
        fits[size] = True
        if size == batch_size:
            out["peak_gb"] = peak
    out["fits"] = fits
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """``torch.cuda.OutOfMemoryError``, or an error whose message says out of memory (a cuDNN or cuBLAS call that
    failed to allocate reports it as a plain RuntimeError)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ------------------------------------------------------------------------------------------------ --recipe --steps: run
def recipe_run_probe(args: argparse.Namespace) -> Result:
    """Train the recipe for ``--steps`` steps on its real data and report what happened; a failure is the result."""
    from dbtk import recipe as recipes
    from dbtk.engine.trainer import PREFETCH

    recipe = _steps_only(recipes.load(args.recipe, args.overrides), args.steps)
    out: Result = {"steps": args.steps, "workers": recipe.train.workers, "batch_size": recipe.train.batch_size, "precision": recipe.train.precision}
    out["benchmark_setting"] = recipe.train.cudnn_benchmark
    out["clean_data"] = _clean_data_command(recipe)
    out["prefetched"] = recipe.train.workers * PREFETCH
    try:
        out.update(_train(recipe, args.steps))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {_first_line(exc)[:300]}"
    return out


def _clean_data_command(recipe: Recipe) -> str:
    """The ``dbtk clean-data ... --check`` line for the recipe's training split (the fix for skipped samples)."""
    import shlex

    split, data = recipe.data.train, recipe.data
    words = ["dbtk", "clean-data", str(split.images)] if split is not None else ["dbtk", "clean-data", "DATA"]
    if split is not None and split.annotations:
        words += ["--annotations", str(split.annotations)]
    return " ".join([*map(shlex.quote, words), "--format", shlex.quote(data.format.name), "--check"])


def _steps_only(recipe: Recipe, steps: int) -> Recipe:
    """The recipe as written minus everything that is not the training step: no validation, no loggers, no
    checkpoints kept (the run folder is temporary), one log line per step so every loss is seen."""
    import attrs

    train = attrs.evolve(recipe.train, max_steps=steps, log_every=1, val_every=0, val_every_steps=0, checkpoint_every=0)
    return attrs.evolve(recipe, loggers=[], data=attrs.evolve(recipe.data, val=None), train=train)


def _train(recipe: Recipe, steps: int) -> Result:
    """The data loader alone, then the training run, then (on CUDA) memory, TF32 and the cuDNN benchmark check."""
    import torch

    from dbtk.engine.trainer import Trainer

    with tempfile.TemporaryDirectory() as folder:
        _stage("building the trainer (and initialising CUDA)")
        trainer = Trainer(recipe, Path(folder))
        device = trainer.device
        out: Result = {"device": device.type}
        if device.type == "cuda":
            out["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "capable": torch.cuda.get_device_capability(device)[0] >= 8,
                           "override": os.environ.get("NVIDIA_TF32_OVERRIDE")}
            torch.cuda.reset_peak_memory_stats(device)
        _stage("timing the data loader")
        out["loader_images_per_second"] = _loader_rate(trainer, steps)
        _stage(f"training {steps} steps on the {_where(trainer)}")
        trainer.run()
        out.update(_summary(trainer.state))
        out.update(_cuda_after_run(trainer) if device.type == "cuda" else {"peak_rss_gb": _peak_rss_gb()})
    return out


def _loader_rate(trainer: Trainer, steps: int) -> float | None:
    """Images/s of the training data loader alone: how fast could it feed the step?"""
    loader = trainer.make_loader()
    iterator = iter(loader)
    next(iterator)  # workers start up
    start, images = time.perf_counter(), 0
    for _ in range(min(steps * trainer.recipe.train.accumulate, len(loader) - 1, 20)):
        images += next(iterator)["images"].shape[0]
    seconds = time.perf_counter() - start
    del iterator, loader  # its persistent workers must not compete with the training run measured next
    return images / seconds if seconds > 0 and images else None


def _summary(state: TrainingState) -> Result:
    """Losses, bad steps, throughput, data waits and skipped samples from the run's logged history.

    ``bad_steps`` (steps whose loss was not finite) and ``overflow_steps`` (fp16 steps GradScaler skipped because
    the scaled gradients overflowed while the loss was finite) are the trainer's run totals on each training line;
    a trainer that logs no ``overflow_steps`` had none.
    """
    losses = [line["loss"] for line in state.history if "loss" in line]
    train_lines = [line for line in state.history if "images_per_second" in line]
    counted = [line for line in state.history if "bad_steps" in line]
    steady = train_lines[1:] or train_lines  # the first window includes start-up (workers, allocations)
    rates = sorted(line["images_per_second"] for line in steady)
    waits = [line["data_wait_fraction"] for line in steady]
    return {
        "losses_finite": sum(math.isfinite(value) for value in losses), "losses_logged": len(losses),
        "bad_steps": int(counted[-1]["bad_steps"]) if counted else 0,
        "overflow_steps": int(counted[-1].get("overflow_steps", 0)) if counted else 0, "skipped": dict(state.skipped),
        "train_images_per_second": rates[len(rates) // 2] if rates else None,
        "data_wait_fraction": sum(waits) / len(waits) if waits else None,
    }


def _cuda_after_run(trainer: Trainer) -> Result:
    """Peak memory of the run (counted from before it started), then the step with cuDNN autotuning off and on."""
    import torch

    device = trainer.device
    _stage("timing the step with cuDNN autotuning off and on (GPU)")
    return {"peak_gb": torch.cuda.max_memory_allocated(device) / 2**30,
            "total_gb": torch.cuda.get_device_properties(device).total_memory / 2**30,
            "cudnn_benchmark": {"off": _timed_step(trainer, benchmark=False), "on": _timed_step(trainer, benchmark=True)}}


def _timed_step(trainer: Trainer, benchmark: bool) -> Result:
    """Milliseconds of the trainer's forward + backward at the recipe's batch with cuDNN autotuning off or on
    (autotuning may pick kernels that need more workspace than the card has: then the error is the result)."""
    import torch

    torch.backends.cudnn.benchmark = benchmark
    batch = _batch(trainer, trainer.recipe.train.batch_size)
    try:
        for _ in range(3):  # the last of three: autotuning happens on the first
            torch.cuda.synchronize(trainer.device)
            start = time.perf_counter()
            trainer.forward_backward(trainer.train_model.train(), batch)
            torch.cuda.synchronize(trainer.device)
        return {"ms": (time.perf_counter() - start) * 1e3}
    except RuntimeError as exc:
        return {"error": _first_line(exc)[:200]}
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)


def _peak_rss_gb() -> float:
    """The process's peak resident memory: on the CPU, what the run needed (``ru_maxrss`` is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    main()
