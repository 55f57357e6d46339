"""Network latency on CPU: torch (fp32, channels-last, inference mode) vs onnxruntime on the exported graph.

Both run the same weights on the same uint8 batch in this process, one after the other; the export is checked
against torch first (max |Δprob|). Defaults: the docs recipe's model with random weights (latency does not
depend on the values), batch 1, sides 640 and 1024.

    python benchmarks/onnx_latency.py --markdown
    python benchmarks/onnx_latency.py --checkpoint runs/docs/checkpoints/best.safetensors
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import machine, median_run

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="dbtk weights file (default: recipes/docs.toml with random weights)")
    parser.add_argument("--sides", type=int, nargs="+", default=[640, 1024])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    import onnxruntime

    from dbtk.io.checkpoint import save_weights
    from dbtk.infer.detector import Detector
    from dbtk.infer.export import export_onnx
    from dbtk.models.builder import build_model
    from dbtk.recipe import load

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint
        if checkpoint is None:
            recipe = load(REPO / "recipes" / "docs.toml")
            torch.manual_seed(0)
            checkpoint = str(Path(folder) / "docs.safetensors")
            save_weights(checkpoint, build_model(recipe.model), recipe)
        exported = Path(folder) / "model.onnx"
        export_onnx(checkpoint, exported)
        torch_runtime = Detector.load(checkpoint, "cpu").runtime
        onnx_runtime = Detector.load(exported, "cpu").runtime

        rows = []
        for side in args.sides:
            batch = np.random.default_rng(side).integers(0, 256, (1, side, side, 3), dtype=np.uint8)
            diff = float(np.abs(torch_runtime(batch) - onnx_runtime(batch)).max())
            torch_runtime(batch), onnx_runtime(batch)  # warm-up
            torch_s, _ = median_run(lambda b=batch: torch_runtime(b), args.repeat)
            onnx_s, _ = median_run(lambda b=batch: onnx_runtime(b), args.repeat)
            rows.append((side, torch_s, onnx_s, diff))

    line = (f"torch {torch.__version__} ({torch.get_num_threads()} threads) vs onnxruntime {onnxruntime.__version__} "
            f"(CPUExecutionProvider), batch 1, fp32, median of {args.repeat}; {machine()}")
    if args.markdown:
        print(line + "\n")
        print("| input | torch ms | onnxruntime ms | torch / onnxruntime | max abs Δprob |")
        print("|---|---:|---:|---:|---:|")
        for side, t, o, d in rows:
            print(f"| {side}×{side} | {t * 1e3:.0f} | {o * 1e3:.0f} | {t / o:.2f} | {d:.1e} |")
    else:
        print(line)
        for side, t, o, d in rows:
            print(f"{side}x{side}: torch {t * 1e3:.1f} ms  onnxruntime {o * 1e3:.1f} ms  ratio {t / o:.2f}  max diff {d:.1e}")


if __name__ == "__main__":
    main()
