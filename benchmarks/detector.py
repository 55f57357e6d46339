"""Detector end-to-end time vs the bare model forward at the same input size (CPU).

Usage: python benchmarks/detector.py CHECKPOINT [--data ../shared/data/docs-dev/val] [--images 10] [--markdown]

End to end = resize to eval.long_side, forward, post-processing to boxes in original coordinates (the image
already decoded, as in a service). Bare = ``model(x)`` on the already resized tensor. Both alternate per image;
medians over the images are reported. Goal: end to end <= 1.3x the bare forward.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import DOCS_VAL, machine

from dbtk.data.formats import ICDAR2015
from dbtk.infer.detector import Detector, resize_for_inference
from dbtk.recipe import Split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default=str(DOCS_VAL))
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    detector = Detector.from_checkpoint(args.checkpoint, device="cpu")
    reader = ICDAR2015(Split(args.data))
    images = [reader.load(i).decoded.image for i in range(min(args.images, len(reader)))]
    detector.detect_arrays(images[:1])  # warm-up
    end_to_end, bare, boxes = [], [], 0
    for image in images:
        start = time.perf_counter()
        boxes += len(detector.detect_arrays([image])[0])
        end_to_end.append(time.perf_counter() - start)
        tensor = torch.from_numpy(resize_for_inference(image, detector.long_side).tensor).permute(2, 0, 1)[None].contiguous()
        start = time.perf_counter()
        with torch.inference_mode():
            detector.runtime.model(tensor, return_all=False)
        bare.append(time.perf_counter() - start)
    e2e, fwd = statistics.median(end_to_end), statistics.median(bare)
    line = f"long side {detector.long_side}, {len(images)} docs-dev val pages, {boxes} boxes, fp32, torch {torch.__version__} CPU ({torch.get_num_threads()} threads), {machine()}"
    if args.markdown:
        print(line + "; medians.\n")
        print("| path | ms / image | ratio |")
        print("|---|---:|---:|")
        print(f"| bare `model(x)` on the resized tensor | {fwd * 1e3:.0f} | 1.00 |")
        print(f"| `Detector` end to end (resize + forward + post-processing) | {e2e * 1e3:.0f} | {e2e / fwd:.3f} |")
    else:
        print(line)
        print(f"bare {fwd * 1e3:.1f} ms  end-to-end {e2e * 1e3:.1f} ms  ratio {e2e / fwd:.3f}")


if __name__ == "__main__":
    main()
