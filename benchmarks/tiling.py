"""Tiled inference on one large page assembled from docs-dev val pages, against the same model on the pages.

Usage: python benchmarks/tiling.py CHECKPOINT [--data ../shared/data/docs-dev/val] [--tile 1024] [--overlap PX]
       [--scale 1.0] [--width 7800] [--crops 2048 3072]
       (prints a markdown table; one JSON line per measurement on stderr; --mode MODE runs one row alone)

The val pages are packed at native scale (shelf by shelf, tallest first, 16 px white gaps) onto one canvas of at
least 6000 × 4000 px, their labels shifted with them. Each way of running the model is scored with the ICDAR2015
metric in its own process, so its peak memory (the process's maximum resident set) is its own:

- pages: the split page by page, as ``dbtk eval`` runs it (the recipe's ``eval.long_side``);
- pages, tiled: the same pages with ``eval.tile`` at ``eval.tile_scale`` (``--scale``), as the canvas is tiled;
- canvas, one pass: the canvas resized to the recipe's ``eval.long_side`` (what inference without tiling does);
- canvas, tiled: the canvas with ``eval.tile`` at ``eval.tile_scale``;
- crop, one pass: for each ``--crops`` side, the canvas's top-left square of that side in one pass at native scale
  (what one pass over the whole canvas would cost grows with the area; the canvas itself would not fit).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import DOCS_VAL, machine

GAP = 16
MODES = ("pages", "pages, tiled", "canvas, one pass", "canvas, tiled", "crop, one pass")


def resident_mb() -> float:
    """This process's resident set now, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def assemble(data: str, width: int) -> tuple[np.ndarray, list[np.ndarray], list[bool], int]:
    """The split's pages packed onto one white canvas at native scale, with their labels (after the label path)."""
    from dbtk.data.formats import ICDAR2015
    from dbtk.data.labels import prepare
    from dbtk.recipe import Split

    reader = ICDAR2015(Split(data))
    pages = [prepare(reader.load(i), reader.exif) for i in range(len(reader))]
    pages.sort(key=lambda labels: -labels.image.shape[0])
    places, x, y, shelf = [], 0, 0, 0
    for labels in pages:
        h, w = labels.image.shape[:2]
        if x and x + w > width:
            x, y, shelf = 0, y + shelf + GAP, 0
        places.append((x, y))
        x, shelf = x + w + GAP, max(shelf, h)
    size = (max(px + p.image.shape[1] for (px, _), p in zip(places, pages, strict=True)), y + shelf)
    canvas = np.full((size[1], size[0], 3), 255, np.uint8)
    polygons, ignore = [], []
    for (px, py), labels in zip(places, pages, strict=True):
        h, w = labels.image.shape[:2]
        canvas[py : py + h, px : px + w] = labels.image
        polygons += [points + np.float32([px, py]) for points in labels.polygons]
        ignore += labels.ignore
    return canvas, polygons, ignore, len(pages)


def run_mode(args: argparse.Namespace) -> dict:
    """One way of running the model, in this process: its score, time and memory."""
    from dbtk import recipe as recipes
    from dbtk.data.formats import ICDAR2015
    from dbtk.infer.detector import Detector
    from dbtk.infer.evaluate import evaluate_detector
    from dbtk.infer.metrics import evaluate_image, summarize
    from dbtk.recipe import Split

    detector = Detector.from_checkpoint(args.checkpoint, device="cpu")
    tiled = args.mode.endswith("tiled")
    if tiled:
        overlap = args.overlap if args.overlap is not None else detector.recipe.eval.tile_overlap
        settings = [f"eval.tile={args.tile}", f"eval.tile_overlap={overlap}", f"eval.tile_scale={args.scale}"]
        detector.configure(recipes.with_overrides(detector.recipe, settings))
    record = {"mode": args.mode, "long_side": detector.long_side, "tile": detector.tile, "overlap": detector.tile_overlap,
              "scale": detector.tile_scale}
    if args.mode == "crop, one pass":
        canvas = assemble(args.data, args.width)[0]
        crop = np.ascontiguousarray(canvas[: args.side, : args.side])
        del canvas
        detector.configure(recipes.with_overrides(detector.recipe, [f"eval.long_side={max(crop.shape[:2])}"]))
        before = resident_mb()
        start = time.perf_counter()
        detector.detect_arrays([crop])
        record.update(input=f"{crop.shape[1]} × {crop.shape[0]} crop of the canvas", long_side=detector.long_side)
        summary = None
    elif args.mode.startswith("pages"):
        reader = ICDAR2015(Split(args.data))
        before = resident_mb()
        start = time.perf_counter()
        result = evaluate_detector(detector, reader)
        summary = result.summary
        record["input"] = f"{summary.images} pages"
    else:
        canvas, polygons, ignore, count = assemble(args.data, args.width)
        before = resident_mb()
        start = time.perf_counter()
        detections = detector.detect_arrays([canvas])[0]
        summary = summarize([evaluate_image(polygons, ignore, detections.polygons)])
        record["input"] = f"{canvas.shape[1]} × {canvas.shape[0]} canvas of {count} pages"
    record.update(seconds=time.perf_counter() - start, rss_before_mb=before,
                  peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **(summary.as_dict() if summary else {}))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default=str(DOCS_VAL))
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=None, help="default: the recipe's eval.tile_overlap")
    parser.add_argument("--scale", type=float, default=1.0, help="eval.tile_scale: the pages' scale before tiling")
    parser.add_argument("--width", type=int, default=7800, help="canvas width the pages are packed into")
    parser.add_argument("--crops", type=int, nargs="*", default=[2048, 3072], help="sides of the one-pass crops")
    parser.add_argument("--mode", choices=MODES, help="run one measurement in this process and print its JSON")
    parser.add_argument("--side", type=int, default=2048, help="with --mode 'crop, one pass': the crop's side")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    import torch

    records = []
    runs = [(mode, None) for mode in MODES[:-1]] + [(MODES[-1], side) for side in args.crops]
    for mode, side in runs:
        command = [sys.executable, __file__, args.checkpoint, "--data", args.data, "--tile", str(args.tile), "--scale", str(args.scale), "--width", str(args.width), "--mode", mode]
        if args.overlap is not None:
            command += ["--overlap", str(args.overlap)]
        if side is not None:
            command += ["--side", str(side)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        records.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(records[-1]), file=sys.stderr)
    line = (f"{Path(args.checkpoint)}; tile {args.tile}, overlap {records[-1]['overlap']}, tile scale {args.scale:g}, "
            f"eval.long_side {records[0]['long_side']}; "
            f"fp32, torch {torch.__version__} CPU ({torch.get_num_threads()} threads), {machine()}")
    print(line + "\n")
    print("| inference | input | precision | recall | hmean | seconds | peak RSS (MB) | added by inference (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in records:
        if r["mode"] == "crop, one pass":
            print(f"| one pass at native scale | {r['input']} | - | - | - | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['rss_before_mb']:.0f} |")
            continue
        tiles = f"tiled {r['tile']}, overlap {r['overlap']}, scale {r['scale']:g}"
        how = {"pages": f"pages at eval.long_side {r['long_side']}", "pages, tiled": f"pages, {tiles}",
               "canvas, one pass": f"one pass at eval.long_side {r['long_side']}", "canvas, tiled": tiles}[r["mode"]]
        print(f"| {how} | {r['input']} | {r['precision']:.4f} | {r['recall']:.4f} | **{r['hmean']:.4f}** | {r['seconds']:.1f} | "
              f"{r['peak_mb']:.0f} | {r['peak_mb'] - r['rss_before_mb']:.0f} |")


if __name__ == "__main__":
    main()
