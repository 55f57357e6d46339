"""``dbtk serve`` under load on localhost: micro-batched serving against sequential ``Detector`` calls.

In one run, in interleaved rounds (so that whatever else runs on the machine slows all three alike): (1) the
sequential baseline — one ``Detector`` in this process decoding and detecting each request's image one at a time,
what a one-request-at-a-time service does; (2) ``dbtk serve`` in a subprocess, micro-batched (its defaults), and
(3) the same server with ``--max-batch 1`` (one image per forward). Each server is warmed up with one short burst;
each round sends CLIENTS threads × REQUESTS/ROUNDS requests over keep-alive connections to each server, POSTing the
same JPEG bytes, and 4 × REQUESTS/ROUNDS sequential calls. Reported: requests/s, p50/p99 latency, errors, each
server's resident memory after its warm-up and after the last round, its mean batch size from ``/healthz``, and
its exit code after SIGTERM (must be 0), and CPU milliseconds per request (the server process's user + system
time; the baseline's, in this process): unlike requests/s, CPU per request hardly moves when other jobs share
the machine. Bounded: CLIENTS × REQUESTS requests per server, each with a timeout, to
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sequential(detector, data: bytes, count: int) -> tuple[float, float]:  # noqa: ANN001 - a dbtk Detector
    """Wall and CPU seconds for one Detector to answer COUNT requests one at a time (decode included, as the
    server does)."""
    from dbtk.data.images import decode_image

    start, cpu = time.perf_counter(), cpu_seconds(os.getpid())
    for _ in range(count):
        detector.detect_arrays([decode_image(data).image])
    return time.perf_counter() - start, cpu_seconds(os.getpid()) - cpu


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


class Served:
    """A running ``dbtk serve`` subprocess, warmed up; its latencies, errors and timed seconds accumulate."""

    def __init__(self, model: Path, data: bytes, clients: int, options: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dbtk", "serve", str(model), "--port", "0", "--device", "cpu", *options],
            stderr=subprocess.PIPE, text=True,
        )
        self.port = 0
        assert self.process.stderr is not None
        for line in self.process.stderr:
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        if not self.port:
            raise SystemExit(f"dbtk serve did not start (exit {self.process.wait()})")
        load(self.port, data, clients, 5)  # warm-up burst: threads, buffers and batch shapes exist before we measure
        self.before = rss_mib(self.process.pid)
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.seconds = self.cpu = 0.0

    def round(self, data: bytes, clients: int, requests: int) -> None:
        cpu = cpu_seconds(self.process.pid)
        latencies, errors, seconds = load(self.port, data, clients, requests)
        self.cpu += cpu_seconds(self.process.pid) - cpu
        self.latencies += latencies
        self.errors += errors
        self.seconds += seconds

    def stop(self) -> dict:
        after = rss_mib(self.process.pid)
        health = get_json(self.port, "/healthz")
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        return {"rps": len(self.latencies) / self.seconds, "cpu_ms": 1000 * self.cpu / len(self.latencies), "p50": statistics.median(self.latencies),
                "p99": float(np.percentile(self.latencies, 99)), "errors": self.errors, "before": self.before,
                "after": after, "mean_batch": health["batches"]["mean_size"], "code": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="any file dbtk serve takes (default: the tiny random model)")
    parser.add_argument("--long-side", type=int, default=128, help="inference size of the default model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the requests are split into")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"), help="image size")
    parser.add_argument("--serve-args", default="", help="extra dbtk serve options, e.g. '--max-wait-ms 0'")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from dbtk.data.images import decode_image
    from dbtk.infer.detector import Detector

    load_before = f"{os.getloadavg()[0]:.1f}"  # other work on the machine moves every number here
    with tempfile.TemporaryDirectory() as folder:
        model = Path(args.model) if args.model else tiny_model(Path(folder), args.long_side)
        data = page_jpeg(*args.size)
        detector = Detector.load(model, device="cpu")
        for _ in range(3):  # warm-up, as the servers warm up
            detector.detect_arrays([decode_image(data).image])
        options = args.serve_args.split()
        servers = [Served(model, data, args.clients, options), Served(model, data, args.clients, [*options, "--max-batch", "1"])]
        try:
            # Interleaved rounds: whatever else runs on the machine slows all three alike.
            per_round, sequential_seconds, sequential_cpu, sequential_count = args.requests // args.rounds, 0.0, 0.0, 0
            for _ in range(args.rounds):
                seconds, cpu = sequential(detector, data, per_round * 4)
                sequential_seconds, sequential_cpu = sequential_seconds + seconds, sequential_cpu + cpu
                sequential_count += per_round * 4
                for server in servers:
                    server.round(data, args.clients, per_round)
        finally:
            batched, single = (server.stop() for server in servers)
        baseline = sequential_count / sequential_seconds

    def row(label: str, run: dict) -> tuple[str, ...]:
        return (label, f"{run['rps']:.1f}", f"{run['cpu_ms']:.1f}", f"{run['p50'] * 1000:.0f}", f"{run['p99'] * 1000:.0f}", str(len(run["errors"])),
                f"{run['mean_batch']:.2f}", f"{run['before']:.0f} → {run['after']:.0f}")

    load_shape = f"{args.clients} clients × {args.requests}"
    rows = [
        ("sequential Detector calls", f"{baseline:.1f}", f"{1000 * sequential_cpu / sequential_count:.1f}", "-", "-", "-", "1", "-"),
        row(f"dbtk serve --max-batch 1, {load_shape}", single),
        row(f"dbtk serve (micro-batched), {load_shape}", batched),
    ]
    header = ("", "requests/s", "CPU ms/request", "p50 ms", "p99 ms", "errors", "mean batch", "server MiB before → after")
    print(f"load average before the run: {load_before}; after: {os.getloadavg()[0]:.1f}")
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
