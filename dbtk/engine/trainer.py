"""The training loop: plain PyTorch, readable top to bottom.

What makes it safe and fast:
- AMP (bf16 / fp16 with a GradScaler); the loss itself runs in float32 (see the DB loss).
- No host synchronisation inside a step. A non-finite loss or gradient sets a ``found_inf`` flag that the fused
  optimizer honours on the device (the update is skipped, step counts unchanged), BatchNorm statistics from the
  bad forward are rolled back, and the bad-step counters are tensors read only at log time.
- Data order and augmentation derive from (seed, epoch, index), and checkpoints hold the optimizer, scheduler,
  scaler, RNG states and the position inside the epoch, so ``--resume`` reproduces an uninterrupted run
  bit-for-bit on CPU.
- Checkpoints are written atomically; Ctrl-C saves ``last`` and exits with code 130.
- Under torchrun every process takes every N-th micro-batch of the same order and DDP averages gradients; only
  rank 0 logs, validates and writes checkpoints (see ``dbtk/engine/distributed.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import numpy as np
import torch

from dbtk import recipe as recipes
from dbtk.data.dataset import as_float
from dbtk.engine import budget, distributed
from dbtk.engine.distributed import World
from dbtk.engine.state import TrainingState, rng_state, set_rng_state
from dbtk.errors import DbtkError, Interrupted
from dbtk.io.device import on_device
from dbtk.registry import Registry, registry as default_registry

log = logging.getLogger("dbtk.train")

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Signals that stop training at the next step boundary, after saving ``last``: Ctrl-C, and SIGTERM (``kill``,
#: ``docker stop``, a batch scheduler's time limit), which would otherwise end the process and lose those steps.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Batches each loader worker prepares ahead of the step.
PREFETCH = 4


class BadStepsError(DbtkError):
    exit_code = 1


class PlanReady(Exception):
    """``plan_only``: the time budget is planned (``plan``); nothing of the run is kept."""

    def __init__(self, plan: budget.Plan) -> None:
        super().__init__(plan.describe())
        self.plan = plan


class StopRequested(Exception):
    """Training stopped at the step ``--stop-at`` asked for; ``last`` is saved and ``--resume`` continues."""


class EpochBatches:
    """Batches of global indices (``epoch * len + i``) in a seeded per-epoch order; resumable mid-epoch.

    An epoch holds whole optimizer steps only (``accumulate`` micro-batches on each of ``world`` processes), so
    every epoch ends on a step boundary. Process ``rank`` takes every ``world``-th micro-batch of the one order
    all processes share; ``skip`` counts micro-batches of all processes.
    """

    def __init__(self, size: int, batch_size: int, accumulate: int, seed: int, world: World = distributed.SINGLE) -> None:
        self.size, self.batch_size, self.seed, self.world = size, batch_size, seed, world
        group = accumulate * world.size
        self.per_epoch = (size // batch_size) // group * group
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:
        return len(range(self.skip + self.world.rank, self.per_epoch, self.world.size))

    def set_position(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        offset = self.epoch * self.size
        for b in range(self.skip + self.world.rank, self.per_epoch, self.world.size):
            yield [offset + i for i in order[b * self.batch_size : (b + 1) * self.batch_size]]


def init_loader_worker(_worker_id: int) -> None:
    """Each loader worker: one OpenCV thread — the workers are the parallelism, and OpenCV's own thread pool in
    each would oversubscribe the cores — and stop signals left to the main process. ``timeout``, a batch scheduler
    or a terminal sends SIGTERM or SIGINT to the whole process group: a worker that died of it would end training
    with a DataLoader error before the main process saved; it serves on until the main process has saved and
    shuts it down (and it exits by itself if the main process is gone)."""
    import cv2

    cv2.setNumThreads(1)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def make_schedule(kind: str, warmup: int, total: int):  # noqa: ANN201 - a step -> multiplier function
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(max(step - warmup, 0) / max(total - 1 - warmup, 1), 1.0)  # the floor on the last step
        if kind == "poly":
            return (1.0 - progress) ** 0.9
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def make_optimizer(model: torch.nn.Module, train: recipes.Train) -> torch.optim.Optimizer:
    """AdamW or SGD with no weight decay on norms and biases, fused where torch supports it (device-side skip)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.SGD
    extra = {"momentum": 0.9} if train.optimizer == "sgd" else {}
    try:
        return cls(groups, lr=train.lr, fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):  # old torch or a device without fused kernels
        return cls(groups, lr=train.lr, **extra)


class Trainer:
    """Trains one recipe into one run folder. Construction builds everything (each part in its own method);
    :meth:`run` trains; :meth:`make_loader`, :meth:`train_step` and :meth:`forward_backward` are the public pieces the doctor measures."""

    def __init__(
        self,
        recipe: recipes.Recipe,
        run_dir: Path,
        *,
        resume_from: Path | None = None,
        reg: Registry | None = None,
        device: str | None = None,
        world: World | None = None,
        stop_at: int = 0,
        say: Callable[[str], None] | None = None,
        plan_only: bool = False,
        started: float | None = None,
    ) -> None:
        """``say`` receives one-line news for the user (the time-budget plan); ``plan_only`` stops the run as
        soon as a time budget is planned (:class:`PlanReady`), for ``--dry-run``; ``started`` is the
        ``time.perf_counter()`` the run's wall time counts from (the command's start; default: now)."""
        self._created = time.perf_counter() if started is None else started
        self.recipe = recipe
        self._say = say or (lambda _message: None)
        self.plan_only = plan_only
        self.run_dir = Path(run_dir)
        self.reg = reg or default_registry
        self.stop_at = stop_at
        self._join_processes(device, world)
        self._build_model()
        self._build_data()
        self.budget = recipes.duration_seconds(recipe.train.time_budget) if recipe.train.time_budget and not recipe.train.max_steps else None
        if self.budget is not None:
            self.total_steps = budget.MAX_STEPS  # until the plan after the warm-up fixes it
        self._build_optimization()
        self.state = TrainingState(bad_total=torch.zeros((), device=self.device), overflow_total=torch.zeros((), device=self.device),
                                   processes=self.world.size)
        self.bad_run = torch.zeros((), device=self.device)  # consecutive bad steps; restarts at 0 on resume
        if resume_from is not None:
            self._load(resume_from)
            self._say_other_processes()
        if stop_at and stop_at <= self.state.position.step:
            raise DbtkError(f"--stop-at {stop_at} is not after the step this run resumes from ({self.state.position.step})",
                            hint=f"give a step after {self.state.position.step}, or resume without --stop-at")
        self.loggers = [self._logger(i, c) for i, c in enumerate(recipe.loggers)] if self.world.is_main else []
        self._compiled = False
        # a run resumed where it was last validated (a finished run) is not validated and logged again
        self._validated_at = max((int(h["step"]) for h in self.state.history if "val/hmean" in h), default=-1)
        self._saved_step = -1
        self._seconds = {"save": 0.0, "validate": 0.0}  # what the last checkpoint write and validation took
        self._measure_from = 0.0
        self._planned_at: tuple[int, float] | None = None  # (step, time) of this process's plan
        self._interrupted = 0  # the stop signal (SIGINT, SIGTERM) received during run(); 0 = none
        self._started = time.perf_counter()

    @property
    def position(self):  # noqa: ANN201 - engine.state.Position
        return self.state.position

    # ------------------------------------------------------------------ construction helpers
    def _join_processes(self, device: str | None, world: World | None) -> None:
        """Device, process group (under torchrun) and seeds: the first things every rank agrees on."""
        from dbtk.io.device import resolve_device

        self.world = world or distributed.world_from_environment()
        self.device = distributed.device_for(self.world, resolve_device(device or self.recipe.train.device))
        distributed.join(self.world, self.device, self.recipe.train.dist_timeout)
        distributed.require_same_recipe(self.world, recipes.dumps(self.recipe))
        torch.manual_seed(self.recipe.seed)
        np.random.seed(self.recipe.seed % 2**32)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.recipe.train.cudnn_benchmark

    def _build_model(self) -> None:
        """The model (channels-last, SyncBatchNorm under DDP when asked), its DDP wrapper and the loss."""
        from dbtk.models.builder import build_loss, build_model

        train = self.recipe.train
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        model = build_model(self.recipe.model, self.reg)
        if self.world.distributed and train.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.train_model = self._wrap(self.model)
        self.loss_fn = build_loss(self.recipe.loss, self.reg)
        # Running statistics a bad forward would corrupt; restored when its step is skipped.
        self.norm_buffers = [
            buffer
            for module in self.model.modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            for buffer in (module.running_mean, module.running_var)
            if buffer is not None
        ]

    def _build_data(self) -> None:
        """Training dataset, validation reader and the resumable batch order; the step count follows from them."""
        from dbtk.data.dataset import DetectionDataset

        recipe, train = self.recipe, self.recipe.train
        if recipe.data.train is None:
            raise DbtkError("data.train is not set", hint="point data.train at a dataset folder (see docs/recipes.md)")
        reader = self._reader(recipe.data.train, "data.train")
        self.dataset = DetectionDataset(reader, recipe.data, train=True, seed=recipe.seed)
        self.val_reader = self._reader(recipe.data.val, "data.val") if recipe.data.val is not None else None
        if len(self.dataset) < train.batch_size:
            raise DbtkError(f"the training set has {len(self.dataset)} images, fewer than batch_size {train.batch_size}")
        self.batches = EpochBatches(len(self.dataset), train.batch_size, train.accumulate, recipe.seed, self.world)
        self.micro_per_step = train.accumulate * self.world.size
        self.steps_per_epoch = self.batches.per_epoch // self.micro_per_step
        if self.steps_per_epoch == 0:
            raise DbtkError(
                f"an epoch holds fewer batches than one step needs ({self.micro_per_step}: accumulate × processes)",
                hint="lower accumulate or batch_size",
            )
        self.total_steps = train.max_steps or train.epochs * self.steps_per_epoch

    def _build_optimization(self) -> None:
        """Optimizer (fused where possible), LR schedule, mixed-precision dtype and gradient scaler."""
        train = self.recipe.train
        self.optimizer = make_optimizer(self.model, train)
        self.fused = bool(self.optimizer.defaults.get("fused"))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, make_schedule(train.scheduler, train.warmup_steps, self.total_steps)
        )
        self.dtype = DTYPES[train.precision]
        enabled = train.precision == "fp16"
        if hasattr(torch.amp, "GradScaler"):
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=enabled)
        else:  # torch < 2.3: only the CUDA scaler exists, and its first positional argument is init_scale
            self.scaler = torch.cuda.amp.GradScaler(enabled=enabled and self.device.type == "cuda")

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel under torchrun; the model itself otherwise."""
        if not self.world.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _reader(self, split: recipes.Split, key: str):  # noqa: ANN202
        return recipes.build_component(self.reg, key, "dataset", self.recipe.data.format, split=split)

    def _logger(self, index: int, component: recipes.Component):  # noqa: ANN202
        return recipes.build_component(self.reg, f"loggers.{index}", "logger", component, run_dir=self.run_dir)


    # ------------------------------------------------------------------ checkpoints
    def _snapshot(self) -> TrainingState:
        """The state to save: the trainer's counters plus the optimizer, scheduler, scaler and RNGs as they are now."""
        state = self.state
        state.optimizer = self.optimizer.state_dict()
        state.scheduler = self.scheduler.state_dict()
        state.scaler = self.scaler.state_dict()
        state.rng = rng_state()
        return state

    def save(self, name: str, with_state: bool = True, *, collective: bool = True) -> Path:
        """Write a checkpoint from rank 0.

        With training state and ``collective`` (every rank calls it at the same step), the ranks first check that
        they agree, and a second call at the same step is skipped (an epoch end that is also a checkpoint step).
        Rank 0 alone passes ``collective=False`` to re-save after validation found a new best.
        """
        from dbtk.io.checkpoint import save_weights

        path = self.run_dir / "checkpoints" / f"{name}.safetensors"
        if with_state and collective:
            if self._saved_step == self.state.position.step:
                return path
            distributed.require_in_sync(self.world, self.model)
            self._saved_step = self.state.position.step
        if not self.world.is_main:
            return path
        started = time.perf_counter()
        try:
            save_weights(path, self.model, self.recipe, self._snapshot().to_tree() if with_state else None)
        except OSError as exc:
            raise DbtkError(
                f"could not write {path}: {exc.strerror or exc}; the previous checkpoint is intact",
                hint="free disk space (or choose another --out) and resume with --resume",
            ) from None
        self._seconds["save"] = time.perf_counter() - started
        return path

    def _load(self, path: Path) -> None:
        from dbtk.io.checkpoint import read_training_state

        weights, _, tree = read_training_state(path)
        state = TrainingState.from_tree(tree, where=str(path))
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as exc:
            raise DbtkError(f"{path}: weights do not fit this recipe's model ({str(exc).splitlines()[0]})") from None
        self.optimizer.load_state_dict(state.optimizer)
        for param, param_state in self.optimizer.state.items():
            for key, value in param_state.items():  # saved contiguous; give moments their parameter's layout
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    param_state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        set_rng_state(state.rng)
        state.bad_total = state.bad_total.to(self.device)
        state.overflow_total = state.overflow_total.to(self.device)
        self.state = state

    def _say_other_processes(self) -> None:
        """A run resumed on another number of processes trains on: its steps and schedule stay as saved, but each
        step now sees a different number of images — said once, not silently."""
        saved, now = self.state.processes, self.world.size
        if saved != now and self.world.is_main:
            per_process = self.recipe.train.batch_size * self.recipe.train.accumulate
            self._say(f"resuming a run of {saved} training process{'es' if saved > 1 else ''} on {now}: a step now takes "
                      f"{per_process * now} images instead of {per_process * saved}; its step count and learning-rate "
                      "schedule stay as saved")
        self.state.processes = now

    # ------------------------------------------------------------------ the loop
    def make_loader(self) -> torch.utils.data.DataLoader:
        """The training DataLoader over :attr:`batches` (set its position first); public for the doctor's probe."""
        from dbtk.data.dataset import collate

        workers = self.recipe.train.workers
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.batches,
            num_workers=workers,
            worker_init_fn=init_loader_worker if workers > 0 else None,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH if workers > 0 else None,
        )

    def run(self) -> dict[str, float]:
        """Train to the end. Ctrl-C or SIGTERM: ``last`` is saved at the step boundary, then :class:`Interrupted`
        (a KeyboardInterrupt) carrying the signal, so the command can exit with 128 + its number."""

        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from dbtk.io.atomic import remove_stale_temporaries

            remove_stale_temporaries(self.run_dir / "checkpoints")
            remove_stale_temporaries(self.run_dir)  # of a recipe.toml write killed halfway
            self._write_recipe()
        self._started = time.perf_counter()
        self._start_step = self.state.position.step
        total = None if self.budget is not None else self.total_steps  # a time budget fixes it after the warm-up
        info = {"recipe": recipes.dumps(self.recipe), "total_steps": total, "start_step": self.state.position.step}
        for logger in self.loggers:
            logger.start(info)
        self._interrupted = 0

        def on_interrupt(signum: int, _frame: object) -> None:
            self._interrupted = signum  # finish the current step; a half-applied step must never be saved

        previous = {sig: signal.signal(sig, on_interrupt) for sig in STOP_SIGNALS}
        try:
            self._loop_or_lost_contact()
            if self.val_reader is None:
                self.save("best", with_state=False)  # nothing to choose by: the final weights
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for logger in self.loggers:
                logger.close()
            if self.world.is_main:
                self._plot()
        return self.state.history[-1] if self.state.history else {}

    def _loop_or_lost_contact(self) -> None:
        try:
            self._loop()
        except RuntimeError as exc:
            if self.world.distributed and "were not used in producing loss" in str(exc):
                raise DbtkError(
                    f"some model parameters receive no gradient, which DistributedDataParallel cannot train "
                    f"(loss '{self.recipe.loss.name}' with head '{self.recipe.model.head.name}')",
                    hint="the loss must use every output the head computes (dbtk.testing.check_loss and check_head "
                    "catch this in one process); or train in one process",
                ) from None
            if not (self.world.distributed and distributed.is_collective_failure(exc)):
                raise
            raise DbtkError(
                f"rank {self.world.rank} lost contact with the other training processes at step {self.state.position.step} "
                f"({str(exc).splitlines()[0][:160]})",
                hint=f"another process crashed or stalled for more than train.dist_timeout ({self.recipe.train.dist_timeout} s); "
                "see its messages, then continue with --resume",
            ) from None

    def _loop(self) -> None:
        train = self.recipe.train
        loader = self.make_loader()
        sums = torch.zeros(4, device=self.device)  # loss, prob, binary, thresh over the logging window
        window_start, data_wait, window_images = time.perf_counter(), 0.0, 0
        while self.state.position.step < self.total_steps:
            self.batches.set_position(self.state.position.epoch, self.state.position.batch)
            iterator = on_device(iter(loader), self.device)  # on CUDA: copied on a side stream, overlapping the step
            pending: list[dict[str, torch.Tensor]] = []
            finished_epoch = True
            while True:
                waited = time.perf_counter()
                batch = next(iterator, None)
                data_wait += time.perf_counter() - waited
                if batch is None:
                    break
                self.state.skipped.update(batch.pop("skipped"))
                self.state.repairs.update(batch.pop("repairs"))
                pending.append(batch)
                if len(pending) < train.accumulate:
                    continue
                sums += self.train_step(pending)
                window_images += sum(b["images"].shape[0] for b in pending)
                pending = []
                self.state.position.step += 1
                self.state.position.batch += self.micro_per_step
                logging_step = self.state.position.step % train.log_every == 0 or self.state.position.step == self.total_steps
                if logging_step:
                    elapsed = time.perf_counter() - window_start
                    self._log_train(sums, elapsed, data_wait, window_images)
                    sums.zero_()
                    window_start, data_wait, window_images = time.perf_counter(), 0.0, 0
                if train.val_every_steps and self.state.position.step % train.val_every_steps == 0:
                    self.save("last")  # on disk before validation: nothing validation does can lose this step
                    self._validate()
                self._end_if_stopped(logging_step)
                if self.state.position.step == self.stop_at and self.stop_at < self.total_steps:  # at the end: finish
                    self.save("last")
                    raise StopRequested
                if train.checkpoint_every and self.state.position.step % train.checkpoint_every == 0:
                    self.save("last")
                if self.budget is not None:
                    self._budget_hook(logging_step)
                if self.state.position.step >= self.total_steps:
                    finished_epoch = self.state.position.batch >= self.batches.per_epoch
                    break
            if finished_epoch:
                self.state.position.epoch += 1
                self.state.position.batch = 0
                self.save("last")  # every epoch end, whatever checkpoint_every says (and before validating)
                if train.val_every and self.state.position.epoch % train.val_every == 0:
                    self._validate()
                    self._end_if_stopped(True)  # every rank is here: a signal during the validation ends the run now
        self.save("last")
        if self.val_reader is not None and self._validated_at != self.state.position.step:
            self._validate()  # the final weights are always scored, so best.safetensors always exists
            self._end_if_stopped(True)  # stopped: no score yet; --resume scores the final weights

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """One optimizer step over ``accumulate`` micro-batches (gradients averaged across ranks once, on the last),
        exactly as training runs it; the doctor's probe times it. Returns the summed (loss, prob, binary, thresh)."""
        model = self.train_model.train()
        snapshot = [b.clone() for b in self.norm_buffers]
        loss_sum = torch.zeros((), device=self.device)
        parts_sum = torch.zeros(4, device=self.device)
        for index, batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with model.no_sync() if self.world.distributed and not last else contextlib.nullcontext():
                parts = self.forward_backward(model, batch)
            loss_sum = loss_sum + parts[0]
            parts_sum += parts
        self._optimizer_step(loss_sum, snapshot)
        return parts_sum

    def forward_backward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One micro-batch: to the device (channels-last), forward under autocast (compiled when the recipe asks),
        loss, scaled backward. Returns the detached (loss, prob, binary, thresh) parts; never syncs the host."""
        if self.recipe.train.compile and not self._compiled:
            self.model_forward = torch.compile(model)
            self._compiled = True
        forward = self.model_forward if self._compiled else model
        batch = as_float({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})
        batch["images"] = batch["images"].contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            outputs = forward(batch["images"], return_all=True)
            losses = self.loss_fn(outputs, batch)
        self.scaler.scale(losses["loss"] / self.recipe.train.accumulate).backward()
        missing = torch.zeros_like(losses["loss"])  # a plugin loss need only return "loss"
        return torch.stack([losses["loss"], *(losses.get(part, missing) for part in ("prob", "binary", "thresh"))]).detach()

    def _optimizer_step(self, loss_sum: torch.Tensor, snapshot: list[torch.Tensor]) -> None:
        """Clip, skip on the device when the loss or gradient is not finite (BatchNorm statistics restored from
        ``snapshot``), step the optimizer, scaler and schedule, and count bad steps — without a host sync."""
        train = self.recipe.train
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, train.grad_clip if train.grad_clip > 0 else float("inf"))
        loss_bad = ~torch.isfinite(loss_sum)
        grad_bad = ~torch.isfinite(norm)
        # Under fp16 a finite loss with overflowing gradients is GradScaler doing its job (the scale drops and the
        # step is skipped): skipped, counted as an overflow, but not a bad step.
        bad = loss_bad if self.scaler.is_enabled() else loss_bad | grad_bad
        flags = distributed.all_reduce(torch.stack([loss_bad | grad_bad, bad]).float(), "max")  # same on every rank
        skip, bad = flags[0], flags[1]
        if self.fused:
            self.optimizer.found_inf = skip  # the fused kernel skips the update on the device
            self.optimizer.step()
        elif not skip.item():  # unfused fallback (old torch): one sync per step
            self.optimizer.step()
        if self.scaler.is_enabled():
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        restore = skip > 0
        for buffer, saved in zip(self.norm_buffers, snapshot, strict=True):
            buffer.copy_(torch.where(restore, saved, buffer))  # undo BatchNorm statistics of a skipped forward
        self.scheduler.step()
        self.state.bad_total += bad
        self.state.overflow_total += skip - bad
        self.bad_run = (self.bad_run + bad) * bad

    def _end_if_stopped(self, logging_step: bool) -> None:
        """Save ``last`` and end with :class:`Interrupted` when a stop signal arrived (see :meth:`_stop_signal`)."""
        stop_signal = self._stop_signal(logging_step)
        if stop_signal:
            self.save("last")
            raise Interrupted(stop_signal)

    def _stop_signal(self, logging_step: bool) -> int:
        """The stop signal to end on (0: none). Ctrl-C or SIGTERM: at once in one process; under DDP the ranks agree
        at the next logging step (signals reach them at different moments, and a rank that stopped alone would
        leave the others waiting), on the largest signal number any of them received."""
        if not self.world.distributed:
            return self._interrupted
        if not logging_step:
            return 0
        flag = torch.tensor(float(self._interrupted), device=self.device)
        return int(distributed.all_reduce(flag, "max").item())

    # ------------------------------------------------------------------ logging and validation
    def _log_train(self, sums: torch.Tensor, elapsed: float, data_wait: float, images: int) -> None:
        totals = torch.cat([sums, sums.new_tensor([images, sum(self.state.skipped.values()), sum(self.state.repairs.values())])])
        totals = distributed.all_reduce(totals).tolist()  # the one sync per window: every rank's batches
        images, skipped, repaired = int(totals[4]), int(totals[5]), int(totals[6])
        values = [v / max(images / self.recipe.train.batch_size, 1) for v in totals[:4]]
        bad_total, bad_run = int(self.state.bad_total.item()), int(self.bad_run.item())
        overflow_total = int(self.state.overflow_total.item())
        metrics = {
            "loss": values[0], "loss/prob": values[1], "loss/binary": values[2], "loss/thresh": values[3],
            "lr": self.optimizer.param_groups[0]["lr"], "images_per_second": images / elapsed if elapsed else 0.0,
            "data_wait_fraction": data_wait / elapsed if elapsed else 0.0, "epoch": self.state.position.epoch,
            "bad_steps": bad_total, "overflow_steps": overflow_total, "skipped_samples": skipped, "repaired_polygons": repaired,
            "elapsed_seconds": time.perf_counter() - self._started,
        }
        self._emit(metrics)
        if bad_run >= self.recipe.train.max_bad_steps:
            self.save("last")
            raise BadStepsError(
                f"{bad_run} consecutive steps had a non-finite loss or gradient (at step {self.state.position.step})",
                hint="lower train.lr, use precision = 'bf16' or 'fp32', or check the data with 'dbtk clean-data'",
            )

    def _emit(self, metrics: dict[str, float]) -> None:
        self.state.history.append({"step": self.state.position.step, **metrics})
        for logger in self.loggers:
            logger.log(self.state.position.step, metrics)

    def _validate(self) -> None:
        if self.val_reader is None:
            return
        self._validated_at = self.state.position.step
        started = time.perf_counter()
        try:
            self._validate_once()
        finally:
            self._seconds["validate"] = time.perf_counter() - started

    def _validate_once(self) -> None:
        from dbtk.infer.detector import Detector
        from dbtk.infer.evaluate import Stopped, evaluate_detector

        if not self.world.is_main:  # rank 0 scores the full validation set; the others wait for it
            distributed.barrier()
            return
        detector = Detector.from_model(self.model, self.recipe, self.device, borrowed=True)
        try:
            # unusable images are counted and skipped; Ctrl-C or SIGTERM ends the pass at the next image
            result = evaluate_detector(detector, self.val_reader, stop=lambda: self._interrupted != 0)
        except Stopped:
            self.model.train()
            self._validated_at = -1  # no score for this step
            log.warning("validation at step %d stopped by a stop signal: no score for this step", self.state.position.step)
            distributed.barrier()
            return
        except Exception as exc:  # noqa: BLE001 - a validation problem never ends training; `last` is on disk
            self.model.train()
            log.warning("validation at step %d failed and was skipped (%s: %s); training continues",
                        self.state.position.step, type(exc).__name__, str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "")
            distributed.barrier()
            return
        self.model.train()
        summary = result.summary
        self.state.val_skipped = result.skipped
        self._emit({"val/hmean": summary.hmean, "val/precision": summary.precision, "val/recall": summary.recall,
                    "val/images": summary.images, "val/skipped_images": sum(result.skipped.values()),
                    "val/seconds": result.seconds, "elapsed_seconds": time.perf_counter() - self._started})
        if summary.hmean > self.state.best_hmean:
            self.state.best_hmean = summary.hmean
            self.save("best", with_state=False)
        # `last` again, holding this score (and a new best): a resumed run never overwrites the best with a worse
        # one, and never validates this step again (a --resume of a finished run has nothing left to do)
        self.save("last", collective=False)
        distributed.barrier()

    # ------------------------------------------------------------------ time budget
    def _budget_hook(self, logging_step: bool) -> None:
        """Plan after the warm-up (a step, a checkpoint and a validation measured); then, at logging steps, re-plan
        from the average cost per step so far, validations and checkpoints included, when the projection has
        drifted more than 2% (other work on the machine, slower later epochs)."""
        if self.recipe.train.max_steps == 0:
            self._plan()
        elif logging_step and self._planned_at is not None:
            self._replan()

    def _plan(self) -> None:
        done = self.state.position.step - self._start_step
        if done == budget.SKIP:
            self._measure_from = self._synchronized_time()
        if done < budget.SKIP + budget.MEASURED:
            return
        step = self.state.position.step
        step_seconds = (self._synchronized_time() - self._measure_from) / budget.MEASURED
        if self._saved_step != step:
            self.save("last")
        if self.val_reader is not None and self._validated_at != step:
            self._validate()
        cadence = budget.Cadence(self.steps_per_epoch, self.recipe.train.val_every, self.recipe.train.val_every_steps,
                                 self.recipe.train.checkpoint_every, self.val_reader is not None)
        plan = budget.plan(self.budget, time.perf_counter() - self._created, step, step_seconds,
                           self._seconds["validate"], self._seconds["save"], cadence)
        plan = dataclasses.replace(plan, steps=self._agreed(plan.steps))
        if self.plan_only:
            raise PlanReady(plan)
        self._planned_at = (step, time.perf_counter())
        self._set_total(plan.steps, plan.describe())

    def _replan(self) -> None:
        step, now = self.state.position.step, time.perf_counter()
        planned_step, planned_time = self._planned_at
        if step - planned_step < 2 * budget.MEASURED or step >= self.total_steps:
            return
        per_step = (now - planned_time) / (step - planned_step)  # validations and checkpoints spread over the steps
        ending = self._seconds["validate"] + 2 * self._seconds["save"]  # the final validation and checkpoint
        left = self.budget - (now - self._created) - ending
        steps = self._agreed(step + max(1, int(left / per_step)))  # every rank, every time: a collective
        if abs(steps - self.total_steps) > 0.02 * (self.total_steps - planned_step):
            self._set_total(steps, f"time budget {budget.minutes(self.budget)}: {steps} steps after all ({per_step:.2f} s per step so far)")

    def _agreed(self, steps: int) -> int:
        """The smallest step count any process planned: every rank stops at the same step."""
        return int(-distributed.all_reduce(torch.tensor(-float(steps), device=self.device), "max").item())

    def _set_total(self, steps: int, message: str) -> None:
        """Train to ``steps``: the LR schedule ends exactly there; RUN/recipe.toml and checkpoints carry it."""
        self.total_steps = steps
        for index, base in enumerate(self.scheduler.base_lrs):
            self.scheduler.lr_lambdas[index] = make_schedule(self.recipe.train.scheduler, self.recipe.train.warmup_steps, steps)
            self.optimizer.param_groups[index]["lr"] = base * self.scheduler.lr_lambdas[index](self.scheduler.last_epoch)
        self.recipe = attrs.evolve(self.recipe, train=attrs.evolve(self.recipe.train, max_steps=steps))
        if self.world.is_main:
            self._write_recipe()
        self._say(message)
        self._emit({"planned_steps": steps, "elapsed_seconds": time.perf_counter() - self._started})

    def _synchronized_time(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # twice per run: step times are what the GPU did
        return time.perf_counter()

    def _write_recipe(self) -> None:
        """RUN/recipe.toml: the resolved recipe (absolute paths; with a time budget, the step count it fixed)."""
        from dbtk.io.atomic import atomic_write

        text = recipes.dumps(self.recipe)
        atomic_write(self.run_dir / "recipe.toml", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def _plot(self) -> None:
        from dbtk.engine.curves import write_curves

        write_curves(self.state.history, self.run_dir / "curves.png")
