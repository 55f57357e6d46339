"""Training-step overhead: dbtk's step (Trainer) vs a bare hand-written PyTorch loop, same model/batch/precision.

Usage: python benchmarks/train_step.py [--recipe recipes/docs.toml] [--steps 12] [--batch 4] [--size 512]
                                        [--precision bf16] [--device auto] [--markdown]

Both run the same model, optimizer (AdamW, fused where available) and one fixed batch already on the device,
so the comparison isolates the step itself: dbtk adds gradient clipping, the non-finite check with a
device-side skip, BatchNorm roll-back and the LR schedule. Steps alternate between the two (A B A B ...)
so drift affects both alike; medians are reported. The bare loop runs twice: NCHW (what a hand-written loop
usually does) and channels_last (dbtk's layout), so the overhead is measured like for like. Goal: dbtk <= 1.10x
the bare loop.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dbtk import recipe as recipes
from dbtk.engine.trainer import Trainer, make_optimizer
from dbtk.models.builder import build_loss, build_model


def synthetic_batch(batch: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    maps = (torch.rand(batch, size, size, generator=generator) > 0.9).float()
    return {
        "images": torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8).to(device),
        "shrink_map": maps.to(device),
        "shrink_mask": torch.ones(batch, size, size, device=device),
        "thresh_map": (0.3 + 0.4 * maps).to(device),
        "thresh_mask": maps.to(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/docs.toml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    data = recipes.read_toml(args.recipe)
    for override in (f"train.precision={args.precision}", f"train.batch_size={args.batch}", "train.workers=0",
                     "train.accumulate=1", f"train.device={args.device}"):
        recipes.apply_override(data, override)
    data["data"] = {"format": {"name": "synthetic", "count": args.batch}, "train": "train", "image_size": 64}
    data["loggers"] = []
    recipe = recipes.structure(data)
    trainer = Trainer(recipe, Path(tempfile.mkdtemp()))
    device = trainer.device
    batch = synthetic_batch(args.batch, args.size, device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def bare_loop(memory_format: torch.memory_format):  # noqa: ANN202 - a step function
        torch.manual_seed(0)
        bare_model = build_model(recipe.model).to(device).train().to(memory_format=memory_format)
        bare_loss = build_loss(recipe.loss)
        bare_opt = make_optimizer(bare_model, recipe.train)
        bare_scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
        images = batch["images"].contiguous(memory_format=memory_format)

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = bare_loss(bare_model(images, return_all=True), batch)["loss"]
            bare_scaler.scale(loss).backward()
            bare_scaler.step(bare_opt)
            bare_scaler.update()
            bare_opt.zero_grad(set_to_none=True)

        return step

    bare_step = bare_loop(torch.contiguous_format)
    bare_nhwc_step = bare_loop(torch.channels_last)

    def dbtk_step() -> None:
        trainer.train_step([dict(batch)])  # exactly the step training runs (one micro-batch)

    def timed(step) -> float:  # noqa: ANN001
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    loops = {"bare": bare_step, "bare_nhwc": bare_nhwc_step, "dbtk": dbtk_step}
    for _ in range(2):  # warm-up (allocator, kernels, fused optimizer state)
        for step in loops.values():
            timed(step)
    samples = {name: [] for name in loops}
    for _ in range(args.steps):
        for name, step in loops.items():
            samples[name].append(timed(step))
    bare, bare_nhwc, ours = (statistics.median(samples[name]) for name in ("bare", "bare_nhwc", "dbtk"))
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({platform.machine()}, {torch.get_num_threads()} threads)")
    if args.markdown:
        print(f"resnet18 + FPN {recipe.model.decoder.params.get('channels')} + DB head, batch {args.batch} × {args.size}², "
              f"{args.precision}, {where}, torch {torch.__version__}; median of {args.steps} alternating steps.\n")
        print("| loop | ms / step | images / s | ratio |")
        print("|---|---:|---:|---:|")
        print(f"| bare PyTorch loop, NCHW | {bare * 1e3:.0f} | {args.batch / bare:.1f} | {bare / bare_nhwc:.3f} |")
        print(f"| bare PyTorch loop, channels_last (same layout as dbtk) | {bare_nhwc * 1e3:.0f} | {args.batch / bare_nhwc:.1f} | 1.000 |")
        print(f"| dbtk Trainer step (channels_last) | {ours * 1e3:.0f} | {args.batch / ours:.1f} | {ours / bare_nhwc:.3f} |")
    else:
        print(f"bare NCHW {bare * 1e3:.1f} ms  bare NHWC {bare_nhwc * 1e3:.1f} ms  dbtk {ours * 1e3:.1f} ms/step  "
              f"overhead {ours / bare_nhwc:.3f}  ({where})")


if __name__ == "__main__":
    main()
