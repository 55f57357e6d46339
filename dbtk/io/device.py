"""Device selection shared by train, eval, predict and doctor."""

from __future__ import annotations

import torch

from dbtk.errors import DbtkError


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
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DbtkError(f"unknown device '{name}'", hint="use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DbtkError(f"device '{name}' requested but CUDA is not available", hint="run 'dbtk doctor' to see why")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DbtkError(f"device '{name}' requested but only {torch.cuda.device_count()} GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DbtkError("device 'mps' requested but MPS is not available")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # otherwise kernels and the caching allocator still open a context on GPU 0
    return device
