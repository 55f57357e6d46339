"""Batched inference against one image at a time: the network on equal-size batches, and ``Detector`` on a split.

Usage: python benchmarks/batching.py CHECKPOINT [--data ../shared/data/docs-dev/val] [--batch 4] [--rounds 3]
       [--sizes 256 512 1280] [--markdown]

Two measurements, each in interleaved rounds (batch 1, then batch B, then again), so that other work on the machine
slows both alike; medians over rounds:

- the bare runtime (``Detector.runtime``: uint8 NHWC in, probability maps out) on B random images of each square
  ``--sizes`` side, B forwards of one image against one forward of B images;
- ``Detector.detect_arrays`` over the split's pages (decoded beforehand; resize, grouping by resized size, forward,
  post-processing) at ``batch_size`` 1 and B, as ``dbtk eval`` runs them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import DOCS_VAL, machine

from dbtk.data.formats import ICDAR2015
from dbtk.infer.detector import Detector
from dbtk.recipe import Split


def seconds(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default=str(DOCS_VAL))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1280])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    b = args.batch

    detector = Detector.load(args.checkpoint, device="cpu")
    rng = np.random.default_rng(0)
    rows = []
    for side in args.sizes:
        images = rng.integers(0, 256, (b, side, side, 3), dtype=np.uint8)
        detector.runtime(images[:1])  # warm-up at this size
        one, many = [], []
        for _ in range(args.rounds):
            one.append(seconds(lambda: [detector.runtime(images[i : i + 1]) for i in range(b)]))
            many.append(seconds(lambda: detector.runtime(images)))
        rows.append((f"network, {b} images of {side}²", statistics.median(one) / b, statistics.median(many) / b))

    reader = ICDAR2015(Split(args.data))
    pages = [reader.load(i).decoded.image for i in range(len(reader))]
    detector.detect_arrays(pages[:1])
    one, many = [], []
    for _ in range(args.rounds):
        one.append(seconds(lambda: detector.detect_arrays(pages, batch_size=1)))
        many.append(seconds(lambda: detector.detect_arrays(pages, batch_size=b)))
    rows.append((f"Detector on {len(pages)} pages, long side {detector.long_side}", statistics.median(one) / len(pages),
                 statistics.median(many) / len(pages)))

    print(f"{args.checkpoint}; torch {torch.__version__} CPU ({torch.get_num_threads()} threads), {machine()}; "
          f"median of {args.rounds} interleaved rounds")
    if args.markdown:
        print(f"\n| what | batch 1 ms / image | batch {b} ms / image | batch {b} / batch 1 |")
        print("|---|---:|---:|---:|")
    for name, single, batched in rows:
        if args.markdown:
            print(f"| {name} | {single * 1e3:.1f} | {batched * 1e3:.1f} | {batched / single:.2f} |")
        else:
            print(f"{name}: batch 1 {single * 1e3:.1f} ms, batch {b} {batched * 1e3:.1f} ms per image ({batched / single:.2f}x)")


if __name__ == "__main__":
    main()
