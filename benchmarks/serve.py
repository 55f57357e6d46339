"""``dbtk serve`` under load on localhost: micro-batched serving against sequential ``Detector`` calls.

In one run: (1) the sequential baseline — decode and detect each request's image one at a time with one
``Detector`` in this process, what a one-request-at-a-time service does (run before and after the servers, the
faster of the two counts); (2) ``dbtk serve`` in a subprocess, micro-batched (its defaults) and then with
``--max-batch 1`` (the same server, one image per forward), each warmed up with one short burst, then CLIENTS
threads × REQUESTS each over keep-alive connections, POSTing the same JPEG bytes: requests/s, p50/p99 latency,
errors, the server's resident memory before and after the timed run, its mean batch size from ``/healthz``, and
its exit code after SIGTERM (must be 0). Bounded: CLIENTS × REQUESTS requests per server, each with a timeout, to
127.0.0.1 only. Exit 1 on any error, a non-zero exit or memory growth over 10%. Default model: the tiny test model (resnet18,
32-channel FPN, long side 128, random weights: latency does not depend on the values). Linux only (reads
/proc for memory).

    python benchmarks/serve.py --markdown
    python benchmarks/serve.py --model runs/docs/checkpoints/best.safetensors --clients 8 --requests 50
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import machine

# dbtk serve sets this (OpenMP workers that spin after a forward steal the cores of the decoding and
# post-processing threads); the sequential baseline gets it too, so it is measured at its best (3-6 → 25-58
# requests/s on 2 cores) and the comparison is fair. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def tiny_model(folder: Path, long_side: int) -> Path:
    import torch

    from dbtk import recipe as recipes
    from dbtk.io.checkpoint import save_weights
    from dbtk.models.builder import build_model

    recipe = recipes.loads(f"[model.decoder]\nchannels = 32\n[eval]\nlong_side = {long_side}\n")
    torch.manual_seed(0)
    path = folder / "tiny.safetensors"
    save_weights(path, build_model(recipe.model), recipe)
    return path


def page_jpeg(width: int, height: int) -> bytes:
    """A light page with dark text-like bars."""
    import cv2

    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 225, np.uint8) + rng.integers(0, 20, (height, width, 3), dtype=np.uint8)
    for y in range(30, height - 30, 40):
        x = int(rng.integers(20, 80))
        image[y : y + 16, x : x + int(rng.integers(120, width - 120))] = 30
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buffer.tobytes()


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match
    return int(match.group(1)) / 1024


def sequential(model: Path, data: bytes, count: int) -> float:
    """Requests/s of one Detector answering one decoded image at a time (decode included, as the server does)."""
    from dbtk.data.images import decode_image
    from dbtk.infer.detector import Detector

    detector = Detector.load(model, device="cpu")
    for _ in range(3):  # warm-up, as the server warms up
        detector.detect_arrays([decode_image(data).image])
    start = time.perf_counter()
    for _ in range(count):
        detector.detect_arrays([decode_image(data).image])
    return count / (time.perf_counter() - start)


def load(port: int, data: bytes, clients: int, requests: int) -> tuple[list[float], list[str], float]:
    """CLIENTS threads, each REQUESTS POSTs over one keep-alive connection: latencies, errors, wall seconds."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(requests):
            start = time.perf_counter()
            try:
                connection.request("POST", "/v1/detect", data, {"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                body = response.read()
                ok = response.status == 200 and "detections" in json.loads(body)
                error = None if ok else f"{response.status}: {body[:100]!r}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - start)
                if error:
                    errors.append(error)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def get_json(port: int, path: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())


def serve_run(model: Path, data: bytes, clients: int, requests: int, options: list[str]) -> dict:
    """Start dbtk serve, warm it up, time the load, read its memory and /healthz, stop it with SIGTERM."""
    server = subprocess.Popen(
        [sys.executable, "-m", "dbtk", "serve", str(model), "--port", "0", "--device", "cpu", *options],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        port = 0
        assert server.stderr is not None
        for line in server.stderr:
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        if not port:
            raise SystemExit(f"dbtk serve did not start (exit {server.wait()})")
        load(port, data, clients, 5)  # warm-up burst: threads, buffers and batch shapes exist before we measure
        before = rss_mib(server.pid)
        latencies, errors, seconds = load(port, data, clients, requests)
        after = rss_mib(server.pid)
        health = get_json(port, "/healthz")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    return {"rps": len(latencies) / seconds, "p50": statistics.median(latencies), "p99": float(np.percentile(latencies, 99)),
            "errors": errors, "before": before, "after": after, "mean_batch": health["batches"]["mean_size"], "code": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="any file dbtk serve takes (default: the tiny random model)")
    parser.add_argument("--long-side", type=int, default=128, help="inference size of the default model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"), help="image size")
    parser.add_argument("--serve-args", default="", help="extra dbtk serve options, e.g. '--max-wait-ms 0'")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model = Path(args.model) if args.model else tiny_model(Path(folder), args.long_side)
        data = page_jpeg(*args.size)
        count = min(args.clients * args.requests, 200)
        first = sequential(model, data, count)
        options = args.serve_args.split()
        batched = serve_run(model, data, args.clients, args.requests, options)
        single = serve_run(model, data, args.clients, args.requests, [*options, "--max-batch", "1"])
        # the better of before and after: other load on the machine slows one of them, and the speed-up must
        # not profit from that
        baseline = max(first, sequential(model, data, count))

    def row(label: str, run: dict) -> tuple[str, ...]:
        return (label, f"{run['rps']:.1f}", f"{run['p50'] * 1000:.0f}", f"{run['p99'] * 1000:.0f}", str(len(run["errors"])),
                f"{run['mean_batch']:.2f}", f"{run['before']:.0f} → {run['after']:.0f}")

    load_shape = f"{args.clients} clients × {args.requests}"
    rows = [
        ("sequential Detector calls", f"{baseline:.1f}", "-", "-", "-", "1", "-"),
        row(f"dbtk serve --max-batch 1, {load_shape}", single),
        row(f"dbtk serve (micro-batched), {load_shape}", batched),
    ]
    header = ("", "requests/s", "p50 ms", "p99 ms", "errors", "mean batch", "server MiB before → after")
    print(f"machine: {machine()}; image {args.size[0]}×{args.size[1]} JPEG; model "
          f"{model.name if args.model else f'tiny, long side {args.long_side}'}")
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for cells in rows:
            print("| " + " | ".join(cells) + " |")
    else:
        for cells in (header, *rows):
            print("  ".join(f"{cell:>44}" if i == 0 else f"{cell:>11}" for i, cell in enumerate(cells)))
    failed = False
    for name, run in (("--max-batch 1", single), ("micro-batched", batched)):
        growth = (run["after"] - run["before"]) / run["before"]
        print(f"{name}: {run['rps'] / baseline:.2f}× the sequential throughput; memory {growth:+.1%}; "
              f"{len(run['errors'])} errors; exit code after SIGTERM {run['code']}")
        for error in run["errors"][:5]:
            print("  error:", error)
        failed |= bool(run["errors"]) or run["code"] != 0 or growth > 0.10
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
