"""Distributed data parallel training, started explicitly with torchrun (never switched on by itself).

``torchrun --nproc_per_node N -m dbtk train RECIPE`` (or ``dbtk train RECIPE --nproc N``, which runs that
command) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`world_from_environment` reads them and :func:`join`
joins the process group: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``, see :func:`device_for`), gloo on
CPU. Every collective has the recipe's ``train.dist_timeout``, so a rank that dies or stalls makes the others fail
with a message instead of hanging (torchrun itself also stops the remaining ranks when one exits with an error).

A step over N ranks with ``batch_size`` B and ``accumulate`` A is the same computation as one process with batch B
and ``accumulate`` A × N: each rank takes every N-th micro-batch of the same seeded order and DDP averages the
gradients. That is what the tests check, parameter for parameter.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dbtk.errors import DbtkError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_from_environment() -> World:
    """The world torchrun describes in the environment, without joining it."""
    if not launched_by_torchrun():
        return SINGLE
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(world: World, requested: torch.device) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK``; CPU stays CPU."""
    if world.distributed and requested.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise DbtkError(
                f"local rank {world.local_rank} has no GPU: only {torch.cuda.device_count()} visible",
                hint="start at most one process per GPU (--nproc_per_node)",
            )
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return requested


def join(world: World, device: torch.device, timeout_s: float) -> None:
    """Join the process group (idempotent): NCCL for CUDA, gloo otherwise."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise DbtkError(
            f"rank {world.rank} could not join the {backend} process group: {str(exc).splitlines()[0]}",
            hint="start with torchrun (it sets MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE); see docs/distributed.md",
        ) from None


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def require_same_recipe(world: World, recipe_text: str) -> None:
    """Every rank must train the same resolved recipe; a mismatch names the first differing line."""
    if not world.distributed:
        return
    texts: list[str | None] = [None] * world.size
    dist.all_gather_object(texts, recipe_text)
    reference = texts[0] or ""
    for rank, text in enumerate(texts):
        if text == reference:
            continue
        ours, theirs = reference.splitlines(), (text or "").splitlines()
        line = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
        show = lambda lines: lines[line].strip() if line < len(lines) else "(end of recipe)"  # noqa: E731
        raise DbtkError(
            f"rank {rank} resolved a different recipe than rank 0: '{show(theirs)}' vs '{show(ours)}' (line {line + 1})",
            hint="every process must get the same recipe file and --set overrides",
        )


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place reduction across ranks (a no-op in a single process); ``op`` is 'sum' or 'max'."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def is_collective_failure(exc: BaseException) -> bool:
    """A collective failed because another rank died or stalled (not a bug in this process)."""
    backend_error = getattr(dist, "DistBackendError", ())
    text = str(exc)
    return isinstance(exc, backend_error) or any(marker in text for marker in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out"))


def fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """A float64 digest of every parameter, equal on all ranks exactly when their parameters are."""
    return torch.stack([p.detach().double().sum() + p.detach().double().abs().sum() for p in module.parameters()]).sum()


def require_in_sync(world: World, module: torch.nn.Module) -> None:
    """Fail loudly if ranks' parameters have drifted apart (they never should under DDP)."""
    if not world.distributed:
        return
    digest = fingerprint(module).reshape(1)
    gathered = [torch.empty_like(digest) for _ in range(world.size)]
    dist.all_gather(gathered, digest)
    values = [float(g) for g in gathered]
    if len(set(values)) > 1:
        raise DbtkError(f"parameters differ between ranks (fingerprints {values})", hint="report this with the recipe and torch version")


def launch(nproc: int, argv: Sequence[str]) -> int:
    """``dbtk train ... --nproc N``: run the same command under torchrun on this machine; returns its exit code."""
    command = [sys.executable, "-m", "dbtk.engine.torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m", "dbtk", *argv]
    process = subprocess.Popen(command)
    stopped_by = 0
    while True:
        try:
            code = process.wait()
            return 128 + stopped_by if stopped_by else code
        except KeyboardInterrupt as exc:
            # Ctrl-C in a terminal reaches torchrun too; a SIGTERM sent to this process alone (a scheduler, `kill`)
            # does not, and subprocess.call would SIGKILL torchrun here, losing every rank's steps since its
            # checkpoint. Pass the signal on and keep waiting: torchrun hands it to the ranks, which save and exit.
            stopped_by = getattr(exc, "signum", signal.SIGINT)
            if process.poll() is None:
                process.send_signal(stopped_by)
