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
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
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
def torch_probe(_args: argparse.Namespace) -> Result:
    """The torch build and, when CUDA is unusable, the driver's own reason; with CUDA, each GPU and a smoke test."""
    out: Result = {"env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES",) if k in os.environ}}
    try:
        import torch
    except Exception as exc:  # a broken install (a wheel for another Python, missing CUDA libraries) is the finding
        return {"error": f"{type(exc).__name__}: {exc}"}
    out.update(_build())
    if not out["cuda_available"] and out["cuda_version"]:
        out.update(_cuda_init_error())
    if out["cuda_available"]:
        out["arch_list"] = torch.cuda.get_arch_list()
        out["nccl_available"] = torch.distributed.is_available() and torch.distributed.is_nccl_available()
        out["devices"] = [_device(index) for index in range(torch.cuda.device_count())]
        out.update(_smoke_test())
    return out


def _build() -> Result:
    import torch

    cudnn = torch.backends.cudnn
    return {
        "version": torch.__version__, "cuda_version": torch.version.cuda, "hip_version": getattr(torch.version, "hip", None),
        "cudnn_version": cudnn.version() if cudnn.is_available() else None, "cuda_available": torch.cuda.is_available(),
        "nvidia_smi": shutil.which("nvidia-smi") is not None,
    }


def _cuda_init_error() -> Result:
    """A CUDA build without CUDA: initialising it explicitly makes the driver say why (too old, none, hidden)."""
    import torch

    try:
        torch.cuda.init()
    except Exception as exc:
        return {"cuda_init_error": _first_line(exc)}
    return {}


def _device(index: int) -> Result:
    import torch

    properties = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    return {"name": properties.name, "capability": [properties.major, properties.minor], "total_gb": total / 2**30,
            "free_gb": free / 2**30, "bf16": properties.major >= 8, "mig": "MIG" in properties.name}


def _smoke_test() -> Result:
    """Conv forward/backward and matmul on the GPU against the CPU: a broken driver or cuDNN fails here first."""
    import torch

    try:
        torch.manual_seed(0)
        images, weight, matrix = torch.randn(64, 3, 32, 32), torch.randn(8, 3, 3, 3), torch.randn(256, 256)
        cpu, gpu = (_conv_and_matmul(images, weight, matrix, device) for device in ("cpu", "cuda"))
        return {"smoke_max_diff": max(float((c - g).abs().max() / (c.abs().max() + 1e-6)) for c, g in zip(cpu, gpu, strict=True))}
    except Exception as exc:
        return {"smoke_error": f"{type(exc).__name__}: {_first_line(exc)}"}


def _conv_and_matmul(images: torch.Tensor, weight: torch.Tensor, matrix: torch.Tensor, device: str) -> tuple[torch.Tensor, ...]:
    import torch

    weight = weight.detach().to(device).requires_grad_()  # a fresh leaf per device, so each has its own .grad
    output = torch.nn.functional.conv2d(images.to(device), weight, padding=1)
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

    recipe = _on_synthetic_images(recipes.load(args.recipe, args.overrides))
    train = recipe.train
    with tempfile.TemporaryDirectory() as folder:  # the run folder: nothing is written there without Trainer.run
        trainer = Trainer(recipe, Path(folder))
        out: Result = {"device": trainer.device.type, "batch_size": train.batch_size, "accumulate": train.accumulate, "precision": train.precision}
        if trainer.device.type == "cuda":
            out.update(_memory_fit(trainer))
        else:
            out["seconds_per_step"] = _seconds_per_step(trainer)
    return out


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
    """Which of batch 1, 2, B and 2B fit on the GPU, and the peak memory of a step at the recipe's batch B."""
    import torch

    device, batch_size = trainer.device, trainer.recipe.train.batch_size
    out: Result = {"total_gb": torch.cuda.get_device_properties(device).total_memory / 2**30, "bf16_supported": torch.cuda.is_bf16_supported()}
    fits: dict[int, bool] = {}
    for size in sorted({1, 2, batch_size, 2 * batch_size}):
        batch = _batch(trainer, size)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            _step(trainer, batch)
            torch.cuda.synchronize(device)
        except RuntimeError as exc:  # out of memory, or cuDNN out of workspace
            trainer.optimizer.zero_grad(set_to_none=True)
            fits[size] = False
            out.setdefault("oom_message", _first_line(exc)[:200])
            continue
        fits[size] = True
        if size == batch_size:
            out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    out["fits"] = fits
    return out


# ------------------------------------------------------------------------------------------------ --recipe --steps: run
def recipe_run_probe(args: argparse.Namespace) -> Result:
    """Train the recipe for ``--steps`` steps on its real data and report what happened; a failure is the result."""
    from dbtk import recipe as recipes

    recipe = _steps_only(recipes.load(args.recipe, args.overrides), args.steps)
    out: Result = {"steps": args.steps, "workers": recipe.train.workers, "batch_size": recipe.train.batch_size}
    try:
        out.update(_train(recipe, args.steps))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {_first_line(exc)[:300]}"
    return out


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
        trainer = Trainer(recipe, Path(folder))
        device = trainer.device
        out: Result = {"device": device.type}
        if device.type == "cuda":
            out["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32,
                           "capable": torch.cuda.get_device_capability(device)[0] >= 8}
            torch.cuda.reset_peak_memory_stats(device)
        out["loader_images_per_second"] = _loader_rate(trainer, steps)
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
    """Losses, bad steps, throughput, data waits and skipped samples from the run's logged history."""
    losses = [line["loss"] for line in state.history if "loss" in line]
    train_lines = [line for line in state.history if "images_per_second" in line]
    steady = train_lines[1:] or train_lines  # the first window includes start-up (workers, allocations)
    rates = sorted(line["images_per_second"] for line in steady)
    waits = [line["data_wait_fraction"] for line in steady]
    return {
        "losses_finite": sum(math.isfinite(value) for value in losses), "losses_logged": len(losses),
        "bad_steps": int(state.bad_total.item()), "skipped": dict(state.skipped),
        "train_images_per_second": rates[len(rates) // 2] if rates else None,
        "data_wait_fraction": sum(waits) / len(waits) if waits else None,
    }


def _cuda_after_run(trainer: Trainer) -> Result:
    """Peak memory of the run (counted from before it started), then the step with cuDNN autotuning off and on."""
    import torch

    device = trainer.device
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
