"""Fixtures of the serve, report and browser tests: a tiny model that finds boxes with varied scores, pages to
find them in, a split labelled against it, and a running ``dbtk serve``."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dbtk import recipe as recipes
from tests.data_fixtures import jpeg_bytes, text_image, write_icdar

#: Dark bars ("text lines") on the test pages: x0, y0, x1, y1 at 320 × 200.
BARS = ((12, 14, 150, 30), (20, 60, 110, 74), (150, 100, 290, 118), (30, 150, 200, 166))


def page(seed: int = 0) -> bytes:
    """A 320 × 200 JPEG with four dark bars on a noisy light background."""
    return jpeg_bytes(text_image(320, 200, BARS, seed=seed))


def blob_checkpoint(path: Path, long_side: int = 128, tile: int = 0) -> Path:
    """A random resnet18 DBNet reshaped so its map has blobs of varied height where the page is dark.

    A random init's map is nearly constant (one box over everything, or none); here the upsampling kernels are
    made constant (no checkerboard), the logits spread over ~12 units and the bias set so a quarter of a test
    page's pixels pass ``thresh`` — boxes with scores spread between thresh and 1, which the thresholds then split.
    ``tile``: the recipe's ``eval.tile`` (tiled inference, 32 px overlap).
    """
    import torch

    from dbtk.infer.detector import resize_for_inference
    from dbtk.io.checkpoint import save_weights
    from dbtk.models.builder import build_model

    recipe = recipes.loads(
        f'name = "tiny"\n[model.decoder]\nchannels = 32\n[eval]\nlong_side = {long_side}\n'
        + (f"tile = {tile}\ntile_overlap = 32\n" if tile else "")
        + "[postprocess]\nbox_thresh = 0.5\nthresh = 0.3\n"
    )
    torch.manual_seed(0)
    model = build_model(recipe.model).eval()
    image = np.ascontiguousarray(text_image(320, 200, BARS)[..., ::-1])
    sample = torch.from_numpy(resize_for_inference(image, long_side).tensor).permute(2, 0, 1)[None]
    branch = model.head.prob_branch
    last = branch[-1]
    with torch.no_grad():
        for up in (branch[3], branch[6]):
            up.weight.copy_(up.weight.mean(dim=(2, 3), keepdim=True).expand_as(up.weight))
        last.bias.zero_()
        logits = model(sample, return_all=False)["logits"]
        last.weight.mul_(12 / float(logits.max() - logits.min()))
        logits = model(sample, return_all=False)["logits"]
        last.bias.fill_(float(torch.logit(torch.tensor(0.3)) - torch.quantile(logits.flatten(), 0.75)))
    save_weights(path, model, recipe)
    return path


def labelled_split(root: Path, checkpoint: Path, images: int = 4) -> Path:
    """Pages whose ground truth is the model's own confident boxes (score >= 0.7), plus a box it never finds and a
    don't-care region: at box_thresh 0.5 there are matches, misses and false detections (scores 0.5–0.7)."""
    from dbtk.data.images import decode_image
    from dbtk.infer.detector import Detector

    detector = Detector.load(checkpoint, device="cpu")
    items = {}
    for seed in range(images):
        data = jpeg_bytes(text_image(320, 200, BARS, seed=seed))
        found = detector.detect_arrays([decode_image(data).image])[0]
        lines = [",".join(str(int(v)) for v in p.ravel()) + ",word" for p, s in zip(found.polygons, found.scores, strict=True) if s >= 0.7]
        lines += ["200,20,260,20,260,40,200,40,missed", "10,170,60,170,60,190,10,190,###"]
        items[f"page{seed}.jpg"] = (data, "\n".join(lines) + "\n")
    return write_icdar(root, items)


@dataclass
class Served:
    """A ``dbtk serve`` subprocess and its URL; ``stderr`` collects what it printed."""

    process: subprocess.Popen[str]
    port: int
    stderr: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        status, _, data = self.request(method, path, body, headers)
        return status, json.loads(data)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@contextmanager
def serving(model: Path, *options: str, startup_timeout: float = 120) -> Iterator[Served]:
    """Start ``python -m dbtk serve MODEL --port 0 OPTIONS`` and wait for its URL line; stopped on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dbtk", "serve", str(model), "--port", "0", "--device", "cpu", *options],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    served = Served(process, 0)
    ready = threading.Event()

    def pump() -> None:  # keep reading stderr, so the server never blocks on a full pipe
        assert process.stderr is not None
        for line in process.stderr:
            served.stderr.append(line)
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if found:
                served.port = int(found.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + startup_timeout
    while not ready.wait(0.1) and time.monotonic() < deadline:
        pass
    try:
        if not served.port:
            raise AssertionError(f"dbtk serve did not start: {''.join(served.stderr)[-2000:]}")
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
