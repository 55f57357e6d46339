"""Doctor probes: each runs in a fresh interpreter with a timeout and prints one JSON object.

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

TORCH_PROBE = r"""
import json, os
out = {"env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES",) if k in os.environ}}
try:
    import torch
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"})); raise SystemExit
out.update(version=torch.__version__, cuda_version=torch.version.cuda, hip_version=getattr(torch.version, "hip", None),
           cudnn_version=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           cuda_available=torch.cuda.is_available(), nvidia_smi=NVIDIA_SMI)
if not out["cuda_available"] and out["cuda_version"]:
    try:
        torch.cuda.init()
    except Exception as exc:
        out["cuda_init_error"] = str(exc).strip().splitlines()[0]
if out["cuda_available"]:
    out["arch_list"] = torch.cuda.get_arch_list()
    out["nccl_available"] = torch.distributed.is_nccl_available() if torch.distributed.is_available() else False
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        devices.append({"name": p.name, "capability": [p.major, p.minor], "total_gb": total / 2**30, "free_gb": free / 2**30,
                        "bf16": p.major >= 8, "mig": "MIG" in p.name})
    out["devices"] = devices
    try:
        torch.manual_seed(0)
        a, w = torch.randn(64, 3, 32, 32), torch.randn(8, 3, 3, 3, requires_grad=True)
        m = torch.randn(256, 256)
        results = []
        for device in ("cpu", "cuda"):
            wd = w.detach().to(device).requires_grad_()
            y = torch.nn.functional.conv2d(a.to(device), wd, padding=1)
            y.square().mean().backward()
            results.append((y.float().cpu(), wd.grad.float().cpu(), (m.to(device) @ m.to(device)).float().cpu()))
        out["smoke_max_diff"] = max(float((c - g).abs().max() / (c.abs().max() + 1e-6)) for c, g in zip(results[0], results[1]))
    except Exception as exc:
        out["smoke_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
print(json.dumps(out))
"""

VERSIONS_PROBE = r"""
import json
out = {}
for name in ("torchvision", "timm"):
    try:
        module = __import__(name)
        out[name] = {"version": module.__version__}
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
print(json.dumps(out))
"""

PLUGINS_PROBE = r"""
import json
from dbtk.registry import registry, check_entry
rows = []
for e in registry.entries():
    s = check_entry(registry, e, TIMEOUT)
    rows.append({"group": e.kind, "name": e.name, "distribution": e.dist, "status": s.status, "detail": s.detail})
print(json.dumps(rows))
"""


def run_probe(code: str, timeout: float) -> Any:
    """Run a probe script; a timeout or crash becomes a result, never an exception."""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout": timeout}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"probe exited with {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def torch_probe(timeout: float) -> dict[str, Any]:
    return run_probe(TORCH_PROBE.replace("NVIDIA_SMI", repr(shutil.which("nvidia-smi") is not None)), timeout)


def versions_probe(timeout: float) -> dict[str, Any]:
    return run_probe(VERSIONS_PROBE, timeout)


def plugins_probe(timeout: float) -> list[dict[str, Any]] | dict[str, Any]:
    return run_probe(PLUGINS_PROBE.replace("TIMEOUT", repr(timeout / 2)), timeout)


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


MEASURE_PROBE = r"""
import json, sys, time
from dbtk import recipe as recipes
recipe = recipes.load(RECIPE, OVERRIDES)
import torch
from dbtk.io.device import resolve_device
from dbtk.models.builder import build_loss, build_model
device = resolve_device(recipe.train.device)
size = recipe.data.crop or recipe.data.image_size
dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[recipe.train.precision]
if device.type == "cpu" and dtype is torch.float16:
    dtype = torch.bfloat16
model, loss_fn = build_model(recipe.model).to(device).train(), build_loss(recipe.loss)
def step(batch):
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    maps = (torch.rand(batch, size, size, device=device) > 0.9).float()
    t = {"shrink_map": maps, "shrink_mask": torch.ones_like(maps), "thresh_map": 0.3 + 0.4 * maps, "thresh_mask": maps}
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = loss_fn(model(x, return_all=True), t)["loss"]
    loss.backward()
    model.zero_grad(set_to_none=True)
out = {"device": device.type, "batch_size": recipe.train.batch_size, "accumulate": recipe.train.accumulate, "precision": recipe.train.precision}
if device.type == "cpu":
    step(recipe.train.batch_size)
    start = time.perf_counter(); step(recipe.train.batch_size)
    out["seconds_per_step"] = time.perf_counter() - start
else:
    out["total_gb"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    out["bf16_supported"] = torch.cuda.is_bf16_supported()
    fits = {}
    for batch in sorted({1, 2, recipe.train.batch_size, 2 * recipe.train.batch_size}):
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)
        try:
            step(batch); torch.cuda.synchronize(device)
            fits[batch] = True
            if batch == recipe.train.batch_size:
                out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        except RuntimeError as exc:
            fits[batch] = False
            out.setdefault("oom_message", str(exc).strip().splitlines()[0][:200])
    out["fits"] = fits
print(json.dumps(out))
"""


def measure_recipe(recipe_path: str, overrides: tuple[str, ...], timeout: float) -> dict[str, Any]:
    code = MEASURE_PROBE.replace("RECIPE", repr(recipe_path)).replace("OVERRIDES", repr(list(overrides)))
    result = run_probe(code, timeout)
    if result.get("status") == "timeout":
        return {"error": f"measuring the recipe took longer than {timeout:g} s"}
    return result


RUN_PROBE = r"""
import json, math, resource, sys, tempfile, time
import attrs
from dbtk import recipe as recipes
recipe = recipes.load(RECIPE, OVERRIDES)
steps = STEPS
# The recipe as written, minus everything that is not the training step: no validation, no loggers, no checkpoints
# kept (they go to a temporary folder), one log line per step so every loss is seen.
recipe = attrs.evolve(recipe, loggers=[], data=attrs.evolve(recipe.data, val=None),
                      train=attrs.evolve(recipe.train, max_steps=steps, log_every=1, val_every=0, val_every_steps=0, checkpoint_every=0))
import torch
from dbtk.engine.trainer import Trainer
out = {"steps": steps, "workers": recipe.train.workers, "batch_size": recipe.train.batch_size}
try:
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(recipe, folder)
        device = trainer.device
        out["device"] = device.type
        if device.type == "cuda":
            out["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32,
                           "capable": torch.cuda.get_device_capability(device)[0] >= 8}
            torch.cuda.reset_peak_memory_stats(device)
        # The data loader alone: how fast can it feed the step?
        loader = trainer.make_loader()
        iterator = iter(loader)
        next(iterator)  # workers start up
        start, images = time.perf_counter(), 0
        for _ in range(min(steps * recipe.train.accumulate, len(loader) - 1, 20)):
            images += next(iterator)["images"].shape[0]
        loader_seconds = time.perf_counter() - start
        del iterator, loader  # its persistent workers must not compete with the training run measured next
        out["loader_images_per_second"] = images / loader_seconds if loader_seconds > 0 and images else None
        trainer.run()
        losses = [h["loss"] for h in trainer.state.history if "loss" in h]
        out["losses_finite"] = sum(math.isfinite(v) for v in losses)
        out["losses_logged"] = len(losses)
        out["bad_steps"] = int(trainer.state.bad_total.item())
        train_lines = [h for h in trainer.state.history if "images_per_second" in h]
        rates = [h["images_per_second"] for h in train_lines[1:]] or [h["images_per_second"] for h in train_lines]
        waits = [h["data_wait_fraction"] for h in train_lines[1:]] or [h["data_wait_fraction"] for h in train_lines]
        out["train_images_per_second"] = sorted(rates)[len(rates) // 2] if rates else None
        out["data_wait_fraction"] = sum(waits) / len(waits) if waits else None
        out["skipped"] = dict(trainer.state.skipped)
        if device.type == "cuda":
            out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            out["total_gb"] = torch.cuda.get_device_properties(device).total_memory / 2**30
            model, size = trainer.model, recipe.data.crop or recipe.data.image_size
            benchmark = {}
            for flag in (False, True):
                torch.backends.cudnn.benchmark = flag
                try:
                    x = torch.randint(0, 256, (recipe.train.batch_size, 3, size, size), dtype=torch.uint8, device=device)
                    for attempt in range(3):
                        torch.cuda.synchronize(device); start = time.perf_counter()
                        with torch.autocast("cuda", dtype=trainer.dtype or torch.float32, enabled=trainer.dtype is not None):
                            model(x, return_all=True)["binary"].float().mean().backward()
                        torch.cuda.synchronize(device)
                    benchmark["on" if flag else "off"] = {"ms": (time.perf_counter() - start) * 1e3}
                except RuntimeError as exc:
                    benchmark["on" if flag else "off"] = {"error": str(exc).strip().splitlines()[0][:200]}
                model.zero_grad(set_to_none=True)
            out["cudnn_benchmark"] = benchmark
        else:
            out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
print(json.dumps(out))
"""


def run_recipe(recipe_path: str, overrides: tuple[str, ...], steps: int, timeout: float) -> dict[str, Any]:
    """Train the recipe for ``steps`` steps on its real data (in a subprocess) and report what happened."""
    code = RUN_PROBE.replace("RECIPE", repr(recipe_path)).replace("OVERRIDES", repr(list(overrides))).replace("STEPS", str(int(steps)))
    result = run_probe(code, timeout)
    if result.get("status") == "timeout":
        return {"error": f"{steps} training steps took longer than {timeout:g} s"}
    return result
