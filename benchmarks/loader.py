"""One training sample of the docs recipe, part by part, against decoding its page alone (the baseline).

Usage: python benchmarks/loader.py [--data ../shared/data/docs-dev/train] [--samples 80] [--markdown]
       python benchmarks/loader.py --resize 640 [--enlarge 2.5] [--samples 40] [--markdown]

Single-threaded (one OpenCV thread, no DataLoader workers), as one loader worker runs. Every part is timed on
the same samples in the same run, the parts taking turns sample by sample: JPEG decode, label path (orientation +
repair + keep/skip), reading the page from the warm cache instead, the affine warp, the labels after the transform
(crop and size), colour jitter, DB targets, collate, and whole samples through ``DetectionDataset`` with the cache
off and with the decoded-page cache warm.

``--resize SIZE`` times the other training mode, LongestMaxSize SIZE + pad with the default scale range 0.5–1.5
(as recipes/rtx3060.toml), on the pages enlarged ``--enlarge`` times and re-encoded (JPEG quality 90) — the size of
phone photos of receipts: whole samples with pages decoded reduced where they are drawn at half their size or
less (libjpeg's DCT scaling) against the same samples decoded at full size, and the full decode as the baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import positive

from dbtk import recipe as recipes
from dbtk.data.augment import color_jitter, crop_labels, random_affine, warp
from dbtk.data.dataset import DetectionDataset, collate
from dbtk.data.formats import open_split
from dbtk.data.images import read_image
from dbtk.data.reader import RawSample
from dbtk.data.labels import prepare
from dbtk.data.targets import make_targets
from dbtk.errors import DbtkError

REPO = Path(__file__).resolve().parents[1]
DOCS_TRAIN = REPO.parent / "shared" / "data" / "docs-dev" / "train"
#: The busiest GPU goal of the throughput issue: images per second a loader must feed.
GOAL_IMAGES_PER_SECOND = 400
#: Passes over the samples per part; each sample's fastest pass counts.
PASSES = 5


def per_sample(parts: dict[str, Callable[[int], object]], count: int) -> dict[str, float]:
    """Milliseconds per sample of each part: the mean over the samples of each one's fastest of :data:`PASSES`
    runs (timeit's rule, per sample: other work on a shared machine only ever adds time). The parts take turns
    sample by sample, so a slow spell of the machine falls on all of them alike rather than on one part's block."""
    best = {name: [float("inf")] * count for name in parts}
    for _ in range(PASSES):
        for index in range(count):
            for name, fn in parts.items():
                start = time.perf_counter()
                fn(index)
                best[name][index] = min(best[name][index], time.perf_counter() - start)
    return {name: sum(times) / count * 1e3 for name, times in best.items()}


class _FullSize:
    """A reader's samples always decoded at full size: ``load(i)`` without ``draw``."""

    def __init__(self, reader: object) -> None:
        self.reader = reader
        self.exif, self.problems = reader.exif, reader.problems

    def __len__(self) -> int:
        return len(self.reader)

    def name(self, index: int) -> str:
        return self.reader.name(index)

    def load(self, index: int) -> RawSample:
        return self.reader.load(index)

    def identity(self, index: int) -> str:
        return self.reader.identity(index)

    def source(self, index: int) -> Path | None:
        return self.reader.source(index)


def _enlarged(source: Path, target: Path, count: int, factor: float) -> Path:
    """The first ``count`` pages of an ICDAR folder, enlarged ``factor`` times (JPEG quality 90), labels too."""
    import cv2

    reader = open_split(str(source))
    (target / "images").mkdir(parents=True)
    (target / "gts").mkdir()
    for index in range(min(count, len(reader))):
        sample = reader.load(index)
        image = cv2.resize(sample.decoded.image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        name = Path(sample.name).stem
        cv2.imwrite(str(target / "images" / f"{name}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines = [",".join(f"{v * factor:.0f}" for v in a.points.reshape(-1)) + ",###" * a.ignore + ",x" * (not a.ignore)
                 for a in sample.annotations]
        (target / "gts" / f"gt_{name}.txt").write_text("\n".join(lines) + "\n")
    return target


def resize_mode(args: argparse.Namespace) -> None:
    """Whole samples of the LongestMaxSize mode, pages decoded reduced against full size; see the module doc."""
    with tempfile.TemporaryDirectory() as folder:
        root = _enlarged(Path(args.data), Path(folder) / "pages", args.samples, args.enlarge)
        recipe = recipes.load(str(REPO / "recipes" / "docs.toml"), [
            f"data.train={root}", "data.cache=off", "data.crop=0", f"data.image_size={args.resize}",
            "data.scale_min=0.5", "data.scale_max=1.5",
        ])
        reader = open_split(str(root))
        count = len(reader)
        reduced = DetectionDataset(reader, recipe.data, train=True, seed=0)
        full = DetectionDataset(_FullSize(reader), recipe.data, train=True, seed=0)
        cached = DetectionDataset(reader, recipes.with_overrides(recipe, [f"data.cache={folder}/cache"]).data, train=True, seed=0)
        for i in range(count):
            cached[i]  # fill the cache
        reductions = [reduced.page(i).to_page[0, 0] for i in range(count)]
        sides = [max(reader.load(i).decoded.size) for i in range(count)]
        paths = [reader.source(i) for i in range(count)]
        parts = per_sample({
            "JPEG decode, full size (baseline)": lambda i: read_image(paths[i]),
            "one sample, page decoded at full size": lambda i: full[i],
            "**one sample, page decoded reduced**": lambda i: reduced[i],
            "one sample, cache warm (reduced pages)": lambda i: cached[i],
        }, count)
    decode = parts["JPEG decode, full size (baseline)"]
    shares = {n: reductions.count(n) for n in sorted(set(reductions))}
    print(f"{count} docs-dev train pages enlarged {args.enlarge}x (longest side {min(sides)}-{max(sides)} px), "
          f"LongestMaxSize {args.resize}, scale 0.5-1.5; pages decoded at 1/" + ", 1/".join(f"{n:.0f}: {c}" for n, c in shares.items()))
    print("| sample | ms / sample | × full decode |\n|---|---|---|" if args.markdown else "")
    for name, ms in parts.items():
        print(f"| {name} | {ms:.2f} | {ms / decode:.2f}× |" if args.markdown else f"{name:42s} {ms:7.2f} ms  {ms / decode:5.2f}×")


def docs_crops(args: argparse.Namespace) -> None:
    """The docs recipe's crops, part by part; see the module doc."""
    recipe = recipes.load(str(REPO / "recipes" / "docs.toml"), [f"data.train={args.data}", "data.cache=off"])
    data = recipe.data
    reader = open_split(args.data)
    count = min(args.samples, len(reader))
    dataset = DetectionDataset(reader, data, train=True, seed=0)
    config, size = dataset.config, dataset.config.size

    pages = [reader.load(i) for i in range(count)]
    labels = [prepare(page, reader.exif) for page in pages]
    rngs = [np.random.default_rng([0, 0, i]) for i in range(count)]
    matrices = [random_affine(rngs[i], labels[i].image.shape[1], labels[i].image.shape[0], labels[i].polygons, labels[i].ignore, config) for i in range(count)]
    warped = [warp(labels[i].image, matrices[i], size) for i in range(count)]
    kept = [crop_labels(labels[i].polygons, labels[i].ignore, matrices[i], size, data.min_text_size) for i in range(count)]
    samples = [dataset[i] for i in range(count)]
    paths = [reader.source(i) for i in range(count)]

    with tempfile.TemporaryDirectory() as folder:
        cached = DetectionDataset(reader, recipes.with_overrides(recipe, [f"data.cache={folder}"]).data, train=True, seed=0)
        for i in range(count):
            cached[i]  # fill the cache
        parts = per_sample({
            "JPEG decode (baseline)": lambda i: read_image(paths[i]),
            "label path (orient, repair, keep/skip)": lambda i: prepare(pages[i], reader.exif),
            "page from the warm cache (instead of the two above)": lambda i: cached.page(i),
            "random affine + warp": lambda i: warp(labels[i].image, random_affine(np.random.default_rng(i), labels[i].image.shape[1], labels[i].image.shape[0], labels[i].polygons, labels[i].ignore, config), size),
            "labels after the transform": lambda i: crop_labels(labels[i].polygons, labels[i].ignore, matrices[i], size, data.min_text_size),
            "colour jitter": lambda i: color_jitter(warped[i], np.random.default_rng(i), data.color_jitter),
            "DB targets": lambda i: make_targets(*kept[i], size, size, data.shrink_ratio, data.thresh_min, data.thresh_max),
            "collate (per sample)": lambda i: collate([samples[i]]),
            "**one sample, cache off**": lambda i: dataset[i],
            "**one sample, cache warm**": lambda i: cached[i],
        }, count)

    decode = parts["JPEG decode (baseline)"]
    rows = [(name, ms, ms / decode) for name, ms in parts.items()]
    whole_off, whole_warm = parts["**one sample, cache off**"], parts["**one sample, cache warm**"]
    per_worker = 1e3 / whole_off
    print(f"{count} docs-dev train pages, crop {size}, single-threaded; {per_worker:.0f} samples/s per worker (cache off), "
          f"{1e3 / whole_warm:.0f} (warm): {GOAL_IMAGES_PER_SECOND} img/s needs {GOAL_IMAGES_PER_SECOND / per_worker:.1f} workers "
          f"({GOAL_IMAGES_PER_SECOND * whole_warm / 1e3:.1f} warm)")
    if args.markdown:
        print("| part | ms / sample | × page decode |\n|---|---|---|")
        for name, ms, ratio in rows:
            print(f"| {name} | {ms:.2f} | {ratio:.2f}× |")
    else:
        for name, ms, ratio in rows:
            print(f"{name:42s} {ms:7.2f} ms  {ratio:5.2f}×")


def main() -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DOCS_TRAIN))
    parser.add_argument("--samples", type=positive(int), default=80)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--resize", type=positive(int), help="time the LongestMaxSize mode at this size instead")
    parser.add_argument("--enlarge", type=positive(float), default=2.5, help="with --resize: enlarge the pages this many times")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    try:
        (resize_mode if args.resize else docs_crops)(args)
    except DbtkError as exc:  # a recipe value or a data folder this run cannot use: said as a usage error
        parser.error(exc.message)


if __name__ == "__main__":
    main()
