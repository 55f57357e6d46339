"""DB post-processing speed and agreement: dbtk vs rapidocr-onnxruntime's DBPostProcess on the same maps.

Usage: python benchmarks/postprocess.py [--data ../shared/data/docs-dev/val] [--repeat 3] [--markdown]
Needs the `bench` extra (rapidocr-onnxruntime). Probability maps are simulated from the docs-dev labels at
native size (blurred kernels, 15% of lines missed), once clean and once with 3% noise pixels (~30k specks per
page, as early in training). Both use thresh 0.3, box_thresh 0.4, unclip_ratio 1.5, max_candidates 1000, fast
box scores. Goal: dbtk >= 3x faster with the same boxes.
"""

from __future__ import annotations

import numpy as np
from _common import machine, median_run, simulated_probability, standard_arguments

from dbtk.data.formats import ICDAR2015
from dbtk.infer.metrics import evaluate_image
from dbtk.infer.postprocess import boxes_from_map
from dbtk.recipe import Postprocess, Split


def agreement(ours: list[list[np.ndarray]], theirs: list[list[np.ndarray]]) -> tuple[float, float, int, int]:
    """Share of rapidocr boxes that dbtk reproduces (one-to-one IoU > 0.5), their mean IoU, and box counts."""
    import shapely

    matched, ious, n_ours, n_theirs = 0, [], 0, 0
    for mine, reference in zip(ours, theirs, strict=True):
        n_ours, n_theirs = n_ours + len(mine), n_theirs + len(reference)
        score = evaluate_image(reference, [False] * len(reference), mine)
        matched += score.matched
        for g, d in score.pairs:
            a, b = shapely.Polygon(reference[g]), shapely.Polygon(mine[d])
            ious.append(a.intersection(b).area / a.union(b).area)
    return matched / max(n_theirs, 1), float(np.mean(ious)) if ious else 0.0, n_ours, n_theirs


def main() -> None:
    args = standard_arguments(__doc__)
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    reader = ICDAR2015(Split(args.data))
    config = Postprocess(thresh=0.3, box_thresh=0.4, unclip_ratio=1.5, max_candidates=1000, score_mode="fast")
    reference = DBPostProcess(thresh=0.3, box_thresh=0.4, max_candidates=1000, unclip_ratio=1.5, score_mode="fast")
    rows = []
    for label, specks in (("clean maps", 0.0), ("noisy maps (3% specks)", 0.03)):
        rng = np.random.default_rng(0)
        maps = []
        for index in range(len(reader)):
            sample = reader.load(index)
            shape = sample.decoded.image.shape[:2]
            maps.append(simulated_probability(shape, [a.points for a in sample.annotations], rng, specks))

        def run_dbtk() -> list[list[np.ndarray]]:
            return [boxes_from_map(m, config).polygons for m in maps]

        def run_reference() -> list[list[np.ndarray]]:
            return [list(reference(m[None, None], m.shape)[0].astype(np.float64)) for m in maps]

        timings, outputs = {}, {}
        for name, fn in (("dbtk", run_dbtk), ("rapidocr", run_reference)):
            timings[name], outputs[name] = median_run(fn, args.repeat)
        share, mean_iou, n_ours, n_theirs = agreement(outputs["dbtk"], outputs["rapidocr"])
        rows.append((label, timings, share, mean_iou, n_ours, n_theirs, len(maps)))

    if args.markdown:
        print(f"{len(reader)} docs-dev val pages at native size; {machine()}; median of {args.repeat} runs.\n")
        print("| maps | dbtk ms/page | rapidocr ms/page | dbtk speed-up | boxes dbtk / rapidocr | rapidocr boxes matched by dbtk (IoU>0.5) | mean IoU of matches |")
        print("|---|---:|---:|---:|---:|---:|---:|")
    for label, timings, share, mean_iou, n_ours, n_theirs, pages in rows:
        d, r = timings["dbtk"] / pages * 1e3, timings["rapidocr"] / pages * 1e3
        if args.markdown:
            print(f"| {label} | {d:.1f} | {r:.1f} | {r / d:.1f}× | {n_ours} / {n_theirs} | {share:.2%} | {mean_iou:.3f} |")
        else:
            print(f"{label:24s} dbtk {d:7.1f} ms  rapidocr {r:7.1f} ms  x{r / d:5.1f}  boxes {n_ours}/{n_theirs}  matched {share:.2%}  IoU {mean_iou:.3f}")


if __name__ == "__main__":
    main()
