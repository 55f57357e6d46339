"""fp32 vs fp16 vs INT8 ONNX exports of one checkpoint on CPU: file size, hmean and network latency per image.

Every export is made in this process from the same checkpoint (INT8 calibrated on --calibrate-count images spread
over --calibrate) and scored on the same labelled split at the recipe's long side, exactly as
``dbtk export --check --data`` scores it. Latency is the network alone (no resize, no post-processing): the mean
per image over the split, median of --repeat passes, the models taking turns within each pass so that a busy
machine slows them alike. fp16 is also compared with fp32 map for map (the round trip docs/export.md documents).

    python benchmarks/export_precision.py --checkpoint runs/docs/checkpoints/best.safetensors --markdown
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DOCS_VAL, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="dbtk weights file")
    parser.add_argument("--data", default=str(DOCS_VAL), help="labelled ICDAR2015 split to score on")
    parser.add_argument("--calibrate", default=str(DOCS_VAL.parent / "train" / "images"), help="images to calibrate INT8 on")
    parser.add_argument("--calibrate-count", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="timing passes over the split")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from dbtk.cli.export import TOLERANCES, _pick
    from dbtk.data.formats import image_files, open_split
    from dbtk.data.images import read_image
    from dbtk.infer.detector import Detector, resize_for_inference
    from dbtk.infer.export import compare, export_onnx, score

    reader = open_split(args.data)
    calibration = [read_image(path).image for path in _pick(image_files([args.calibrate]), args.calibrate_count)]
    with tempfile.TemporaryDirectory() as folder:
        files = {precision: Path(folder) / f"{precision}.onnx" for precision in ("fp32", "fp16", "int8")}
        seconds = {}
        for precision, path in files.items():
            start = time.perf_counter()
            export_onnx(args.checkpoint, path, precision=precision, calibration=calibration if precision == "int8" else ())
            seconds[precision] = time.perf_counter() - start
        detectors = {"checkpoint": Detector.load(args.checkpoint, "cpu")} | {p: Detector.load(f, "cpu") for p, f in files.items()}
        scores = {name: score(detector, reader) for name, detector in detectors.items()}

        pages = [reader.load(i).decoded.image for i in range(len(reader))]
        long_side = detectors["fp32"].long_side
        batches = [detectors["fp32"].stack([resize_for_inference(page, long_side)]) for page in pages]
        passes: dict[str, list[float]] = {name: [] for name in detectors}
        for _ in range(args.repeat):
            for name, detector in detectors.items():
                start = time.perf_counter()
                for batch in batches:
                    detector.runtime(batch)
                passes[name].append(1e3 * (time.perf_counter() - start) / len(batches))
        latency = {name: statistics.median(values) for name, values in passes.items()}
        sizes = {name: path.stat().st_size / 2**20 for name, path in files.items()} | {"checkpoint": Path(args.checkpoint).stat().st_size / 2**20}
        tolerance, box_shift, margin = TOLERANCES["fp16"]
        round_trip = compare(detectors["fp32"], detectors["fp16"], [(str(i), page) for i, page in enumerate(pages)], margin)

    rows = [("checkpoint (torch fp32)", "checkpoint"), ("ONNX fp32", "fp32"), ("ONNX fp16", "fp16"), ("ONNX INT8", "int8")]
    head = (f"{Path(args.checkpoint).resolve()} on {args.data} ({len(reader)} images, long side {long_side}); onnxruntime "
            f"{onnxruntime.__version__} CPUExecutionProvider, torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"median of {args.repeat} passes; INT8 calibrated on {len(calibration)} images of {args.calibrate}; {machine()}")
    counts = sum(r.reference_boxes == r.export_boxes for r in round_trip)
    within = all(r.max_abs_diff <= tolerance and r.max_box_shift <= box_shift for r in round_trip)
    fp16_line = (f"fp16 vs fp32 ONNX on the same {len(round_trip)} pages: max |Δprob| {max(r.max_abs_diff for r in round_trip):.1e}, "
                 f"same box count on {counts}, largest box shift (Hausdorff, to the nearest box) {max(r.max_box_shift for r in round_trip):.2f} px "
                 f"(boxes scored within {margin:g} of box_thresh aside): {'within' if within else 'OUTSIDE'} the --check tolerance; "
                 "export took " + ", ".join(f"{p} {s:.0f} s" for p, s in seconds.items()))
    if args.markdown:
        print(head + "\n")
        print("| model | file MiB | precision | recall | hmean | network ms/image | vs ONNX fp32 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, name in rows:
            s = scores[name]
            print(f"| {label} | {sizes[name]:.1f} | {s.precision:.4f} | {s.recall:.4f} | {s.hmean:.4f} | {latency[name]:.0f} | "
                  f"{latency['fp32'] / latency[name]:.2f}× |")
        print("\n" + fp16_line)
    else:
        print(head)
        for label, name in rows:
            s = scores[name]
            print(f"{label:24s} {sizes[name]:6.1f} MiB  P {s.precision:.4f} R {s.recall:.4f} hmean {s.hmean:.4f}  "
                  f"{latency[name]:6.0f} ms/image  {latency['fp32'] / latency[name]:.2f}x vs ONNX fp32")
        print(fp16_line)


if __name__ == "__main__":
    main()
