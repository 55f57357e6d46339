"""The micro-batcher: concurrent requests share forward passes, through one worker thread.

Requests arrive one image at a time, but a network forward costs far less per image in a batch (per-call overhead
is paid once, and the kernels work on larger tensors). One worker thread owns the model: it takes the first
waiting image, waits at most ``max_wait`` seconds for more (up to ``max_batch``), and runs them through
:meth:`Detector.probability_maps` grouped by resized size — the grouping :meth:`Detector.detect_stream` uses, so
no image is zero-padded by a larger neighbour and a served answer equals ``dbtk predict``'s whatever else was in
the batch. Post-processing is left to the caller (each request may bring its own thresholds), so it runs on the
request's threads while the worker already forwards the next batch.

A single worker also means one forward at a time: the runtime's own threads get the cores, and two batches never
compete for memory. Work that needs the model to itself — a page of a tiled model (``eval.tile``), whose tiles
are batched by the Detector — is queued as a job (:meth:`MicroBatcher.run`) and runs between batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np

    from dbtk.infer.detector import Prepared, Runtime


class Forward(Protocol):
    """What the batcher needs of a :class:`dbtk.infer.detector.Detector`."""

    runtime: Runtime

    def probability_maps(self, batch: Sequence[Prepared]) -> list[np.ndarray]: ...


class Busy(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


@dataclass
class Stats:
    """Counters for ``/healthz`` and the benchmark: how well requests are being batched."""

    batches: int = 0
    images: int = 0
    cancelled: int = 0  # requests that timed out before their batch ran: skipped, never forwarded

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0


_STOP = object()
T = TypeVar("T")


class MicroBatcher:
    """``submit(prepared) -> Future[probability map]``; one worker thread drains a bounded queue in batches."""

    def __init__(self, detector: Forward, max_batch: int = 8, max_wait: float = 0.005, max_queue: int = 64) -> None:
        self.detector = detector
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = Stats()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="dbtk-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop after the images already queued are done (they are answered, not dropped)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)  # blocks while the queue is full: the worker is draining it
            self._thread.join()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, prepared: Prepared) -> Future[np.ndarray]:
        """Queue one resized image; raises :class:`Busy` instead of waiting when the queue is full.

        Cancelling the returned future before its batch runs (a request that timed out) removes the image from the
        batch: the worker never spends a forward on an answer nobody waits for.
        """
        future: Future[np.ndarray] = Future()
        try:
            self._queue.put_nowait((prepared, future))
        except queue.Full:
            raise Busy from None
        return future

    def run(self, job: Callable[[], T]) -> Future[T]:
        """Queue a job that needs the model to itself (a tiled page: its own batches of tiles), run by the worker
        between batches, so forwards never overlap. Raises :class:`Busy` like :meth:`submit`."""
        future: Future[T] = Future()
        try:
            self._queue.put_nowait((job, future))
        except queue.Full:
            raise Busy from None
        return future

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._forward(batch)  # type: ignore[arg-type]

    def _forward(self, batch: list[tuple[Prepared | Callable[[], object], Future[object]]]) -> None:
        live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
        self.stats.cancelled += len(batch) - len(live)
        for job, future in [(item, future) for item, future in live if callable(item)]:
            try:
                future.set_result(job())
            except Exception as exc:  # noqa: BLE001 - the job's failure belongs to its request, not the worker
                future.set_exception(exc)
        live = [(item, future) for item, future in live if not callable(item)]
        groups: dict[tuple[int, ...], list[tuple[Prepared, Future[np.ndarray]]]] = {}
        for prepared, future in live:
            key = (0,) if self.detector.runtime.input_size is not None else prepared.tensor.shape[:2]
            groups.setdefault(key, []).append((prepared, future))
        for group in groups.values():
            try:
                maps = self.detector.probability_maps([prepared for prepared, _ in group])
            except Exception as exc:  # noqa: BLE001 - the runtime's failure belongs to these requests, not the worker
                for _, future in group:
                    future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.images += len(group)
            for (_, future), prob in zip(group, maps, strict=True):
                future.set_result(prob)
