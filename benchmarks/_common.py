"""Shared helpers for benchmark scripts: the docs-dev split and simulated detector outputs."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

DOCS_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "docs-dev" / "val"


def machine() -> str:
    return f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"


def simulated_probability(shape: tuple[int, int], polygons: list[np.ndarray], rng: np.random.Generator, specks: float) -> np.ndarray:
    """A detector-like probability map: blurred text kernels (15% of lines missed) plus noise specks.

    ``specks`` is the fraction of pixels set to noise — 0.03 gives the ~30k tiny regions per page seen early
    in training.
    """
    import cv2

    from dbtk.data.targets import make_targets

    h, w = shape
    keep = [p for p in polygons if rng.random() < 0.85]
    prob = make_targets(keep, [False] * len(keep), h, w)["shrink_map"] * rng.uniform(0.5, 1.0)
    prob = cv2.GaussianBlur(prob, (5, 5), 1.5)
    prob += (rng.random((h, w)) < specks) * rng.uniform(0.3, 0.9, (h, w)).astype(np.float32)
    return np.clip(prob, 0, 1).astype(np.float32)


def median_run(fn, repeat: int):  # noqa: ANN001, ANN201 - (median seconds, output of the last run)
    """Run ``fn`` ``repeat`` times; return the median wall time and the last output."""
    import statistics
    import time

    samples, output = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        output = fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), output


def positive(kind: type):  # noqa: ANN201 - an argparse type: kind(text), finite and above 0, else a usage error
    import argparse
    import math

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def standard_arguments(doc: str):  # noqa: ANN201 - argparse.Namespace with data, repeat, markdown
    """--data (default: docs-dev val), --repeat and --markdown, shared by the data-driven benchmarks."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", default=str(DOCS_VAL))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    return parser.parse_args()
