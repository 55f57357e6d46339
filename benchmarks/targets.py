"""DB target generation: dbtk vs python-doctr's DBNet target builder on the same polygons and sizes.

Usage: python benchmarks/targets.py [--data ../shared/data/docs-dev/val] [--repeat 3] [--markdown]

Needs the `bench` extra (python-doctr). doctr's module is loaded by file path when `import doctr` fails (it
needs no torchvision for target building). Both get every polygon as care text at the image's native size.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from dbtk.data.formats import ICDAR2015
from dbtk.data.targets import make_targets
from dbtk.recipe import Split


def load_doctr_dbnet() -> type:
    try:
        from doctr.models.detection.differentiable_binarization.base import _DBNet
    except ImportError:
        spec = importlib.util.find_spec("doctr")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("python-doctr is not installed: pip install -e '.[bench]'")
        path = Path(spec.submodule_search_locations[0]) / "models/detection/differentiable_binarization/base.py"
        module_spec = importlib.util.spec_from_file_location("doctr_db_base", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        _DBNet = module._DBNet
    return _DBNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/docs-dev/val"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    reader = ICDAR2015(Split(args.data))
    pages = []
    for index in range(len(reader)):
        sample = reader.load(index)
        h, w = sample.decoded.image.shape[:2]
        polygons = [a.points.astype(np.float32) for a in sample.annotations]
        pages.append((h, w, polygons))
    n_polygons = sum(len(p) for _, _, p in pages)

    doctr_db = load_doctr_dbnet()
    doctr = doctr_db.__new__(doctr_db)

    def dbtk_page(h: int, w: int, polys: list[np.ndarray]) -> dict[str, np.ndarray]:
        return make_targets(polys, [False] * len(polys), h, w)

    def doctr_page(h: int, w: int, polys: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        relative = (np.stack(polys) / np.array([w, h], np.float32)).astype(np.float32)
        return doctr.build_target([{"words": relative}], (1, h, w))

    # Timing loops discard their outputs, as a data loader does; keeping 40 pages of maps alive would time
    # page faults on fresh memory instead of target generation.
    timings = {}
    for name, page_fn in (("dbtk", dbtk_page), ("doctr", doctr_page)):
        samples = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for h, w, polys in pages:
                page_fn(h, w, polys)
            samples.append(time.perf_counter() - start)
        timings[name] = statistics.median(samples)
    results = {
        "dbtk": [dbtk_page(h, w, p) for h, w, p in pages],
        "doctr": [doctr_page(h, w, p) for h, w, p in pages],
    }

    shrink_diff, thresh_diff, mask_diff, pixels = 0, [], 0, 0
    for ours, theirs in zip(results["dbtk"], results["doctr"], strict=True):
        seg, _seg_mask, thresh, thresh_mask = (t[0, 0] for t in theirs)
        shrink_diff += int((ours["shrink_map"] != seg).sum())
        mask_diff += int((ours["thresh_mask"] != thresh_mask).sum())
        inside = thresh_mask.astype(bool) & ours["thresh_mask"].astype(bool)
        thresh_diff.append(np.abs(ours["thresh_map"] - thresh)[inside])
        pixels += seg.size
    thresh_all = np.concatenate(thresh_diff)

    machine = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    per_page = {k: v / len(pages) * 1e3 for k, v in timings.items()}
    rows = [
        ("dbtk make_targets", per_page["dbtk"], 1.0),
        ("doctr _DBNet.build_target", per_page["doctr"], timings["doctr"] / timings["dbtk"]),
    ]
    if args.markdown:
        print(f"{len(pages)} pages, {n_polygons} polygons, native size; {machine}; median of {args.repeat} runs.\n")
        print("| implementation | ms / page | dbtk speed-up |")
        print("|---|---:|---:|")
        for name, ms, ratio in rows:
            print(f"| {name} | {ms:.1f} | {ratio:.1f}× |")
        print()
    else:
        for name, ms, ratio in rows:
            print(f"{name:28s} {ms:8.1f} ms/page  speed-up {ratio:5.1f}x")
    print(f"shrink map: {shrink_diff / pixels:.4%} of pixels differ")
    print(f"thresh mask: {mask_diff / pixels:.4%} of pixels differ")
    print(
        f"thresh map inside both masks: max |diff| {thresh_all.max():.4f}, mean {thresh_all.mean():.5f}, "
        f"99th percentile {np.percentile(thresh_all, 99):.4f}"
    )


if __name__ == "__main__":
    main()
