"""ICDAR2015 metric speed: dbtk vs text-det-metric on the same ground truth and predictions.

Usage: python benchmarks/metric.py [--data ../shared/data/docs-dev/val] [--repeat 3] [--markdown]
Needs the `bench` extra (text-det-metric). Predictions are the labels jittered by N(0, 2 px), so matches,
misses and don't-care overlaps all occur. Goal: dbtk >= 10x faster, identical numbers.
"""

from __future__ import annotations

import numpy as np
from _common import machine, median_run, standard_arguments

from dbtk.data.formats import ICDAR2015
from dbtk.infer.metrics import evaluate_image, summarize
from dbtk.recipe import Split


def main() -> None:
    args = standard_arguments(__doc__)
    from text_det_metric import TextDetMetric

    rng = np.random.default_rng(0)
    reader = ICDAR2015(Split(args.data))
    images = []
    for record in reader.records:
        gts = [a.points for a in record.annotations]
        ignore = [a.ignore for a in record.annotations]
        dets = [g + rng.normal(0, 2.0, g.shape) for g in gts]
        images.append((gts, ignore, dets))
    reference = TextDetMetric()
    ref_inputs = [
        ([{"points": g.tolist(), "ignore": i} for g, i in zip(gts, ign, strict=True)], [{"points": d.tolist(), "ignore": False} for d in dets])
        for gts, ign, dets in images
    ]

    def run_dbtk():  # noqa: ANN202
        return summarize(evaluate_image(g, i, d) for g, i, d in images)

    def run_reference():  # noqa: ANN202
        return [reference.evaluate_image(g, d) for g, d in ref_inputs]

    timings, outputs = {}, {}
    for name, fn in (("dbtk", run_dbtk), ("text-det-metric", run_reference)):
        timings[name], outputs[name] = median_run(fn, args.repeat)
    ours = outputs["dbtk"]
    matched = sum(r["detMatched"] for r in outputs["text-det-metric"])
    gt = sum(r["gtCare"] for r in outputs["text-det-metric"])
    det = sum(r["detCare"] for r in outputs["text-det-metric"])
    p, r = matched / det, matched / gt
    h = 2 * p * r / (p + r)
    n_gt = sum(len(g) for g, _, _ in images)
    if args.markdown:
        print(f"{len(images)} images, {n_gt} ground-truth and {n_gt} predicted polygons; {machine()}; median of {args.repeat} runs.\n")
        print("| implementation | ms / image | dbtk speed-up | precision | recall | hmean |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| dbtk | {timings['dbtk'] / len(images) * 1e3:.2f} | 1.0× | {ours.precision:.6f} | {ours.recall:.6f} | {ours.hmean:.6f} |")
        print(f"| text-det-metric 0.0.8 | {timings['text-det-metric'] / len(images) * 1e3:.2f} | "
              f"{timings['text-det-metric'] / timings['dbtk']:.1f}× | {p:.6f} | {r:.6f} | {h:.6f} |")
    else:
        for name, seconds in timings.items():
            print(f"{name:16s} {seconds / len(images) * 1e3:8.2f} ms/image")
        print(f"speed-up {timings['text-det-metric'] / timings['dbtk']:.1f}x")
        print(f"dbtk      P {ours.precision:.12f} R {ours.recall:.12f} H {ours.hmean:.12f}")
        print(f"reference P {p:.12f} R {r:.12f} H {h:.12f}")
    assert max(abs(ours.precision - p), abs(ours.recall - r), abs(ours.hmean - h)) <= 1e-9


if __name__ == "__main__":
    main()
