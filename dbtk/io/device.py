"""Device selection shared by train, eval, predict and doctor."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from dbtk.errors import DbtkError
from dbtk.recipe import valid_device


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is not available is an error.

    An explicit ``cuda:N`` also becomes the current CUDA device of the process.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not valid_device(name):  # the recipe's rule: torch.device also takes 'meta', 'xpu' ..., which dbtk cannot run on
        raise DbtkError(f"unknown device '{name}'", hint="use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DbtkError(f"device '{name}' requested but CUDA is not available", hint="run 'dbtk doctor' to see why")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DbtkError(f"device '{name}' requested but only {torch.cuda.device_count()} GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DbtkError("device 'mps' requested but MPS is not available")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # otherwise kernels and the caching allocator still open a context on GPU 0
    return device


def on_device(batches: Iterable[dict[str, Any]], device: torch.device) -> Iterator[dict[str, Any]]:
    """Each batch with its tensors on ``device``; on CUDA copied on a side stream, so the copy overlaps compute.

    The training step never waits for the host, so by the time the loop asks for batch n+1 the CPU has only
    queued step n's kernels: a copy queued on the compute stream would wait for all of them, then hold the next
    step's first kernel. On a side stream (from pinned memory, which the loader provides on CUDA) it runs while
    step n computes; the compute stream waits for the copy alone, and ``record_stream`` keeps the caching
    allocator from reusing the copied memory before the compute stream is done with it (pinned host buffers are
    kept by torch's host allocator until their copy has run). Elsewhere the tensors
    are moved as they are (a no-op on the CPU). Values that are not tensors (the loader's counters) pass through.
    """
    if device.type != "cuda":
        for batch in batches:
            yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return
    side = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)
    for batch in batches:
        with torch.cuda.stream(side):
            moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        compute.wait_stream(side)
        for value in moved.values():
            if isinstance(value, torch.Tensor):
                value.record_stream(compute)
        yield moved
