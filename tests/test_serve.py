"""``dbtk serve``: answers equal the Detector's, concurrent requests share batches, hostile requests get 4xx JSON,
limits hold, and Ctrl-C / SIGTERM drain the requests in flight and exit 0 (docs/serve.md, docs/reliability.md)."""

from __future__ import annotations

import functools
import json
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="dbtk serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="dbtk serve needs the serve extra: pip install -e '.[serve]'")

from tests.conftest import run_dbtk  # noqa: E402
from tests.web_fixtures import Served, blob_checkpoint, page, serving  # noqa: E402
from tests.test_startup import imported_modules  # noqa: E402

#: The module server's limits: small, so each is cheap to hit.
LIMITS = ("--timeout", "3", "--max-upload-mb", "1", "--max-pixels", "4000000", "--queue", "6", "--max-wait-ms", "50")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return blob_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.safetensors")


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[Served]:
    with serving(checkpoint, *LIMITS) as served:
        yield served
        assert served.stop(signal.SIGINT) == 0, "".join(served.stderr)  # Ctrl-C: drain, then exit 0


def multipart(files: dict[str, tuple[str, bytes]], fields: dict[str, str] | None = None, boundary: str = "dbtkXbound") -> tuple[bytes, dict[str, str]]:
    chunks = []
    for name, value in (fields or {}).items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
        chunks.append(head.encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@functools.cache
def loaded(checkpoint: Path):  # noqa: ANN201 - a Detector, loaded once per model file
    from dbtk.infer.detector import Detector

    return Detector.load(checkpoint, device="cpu")


def expected(checkpoint: Path, data: bytes, box_thresh: float | None = None):  # noqa: ANN201 - Detections
    """What an in-process Detector finds — the answer ``dbtk predict`` writes."""
    import attrs

    from dbtk.data.images import decode_image
    from dbtk.infer.detector import Detector

    detector = loaded(checkpoint)
    if box_thresh is not None:
        postprocess = attrs.evolve(detector.postprocess, box_thresh=box_thresh)
        detector = Detector(detector.runtime, attrs.evolve(detector.recipe, postprocess=postprocess))
    return detector.detect_arrays([decode_image(data).image])[0]


# ---------------------------------------------------------------------------------------------- answers
def test_answers_equal_the_detector(server: Served, checkpoint: Path) -> None:
    from dbtk.infer.evaluate import detections_json, icdar_lines, receipt_words

    data = page(1)
    found = expected(checkpoint, data)
    assert 0 < len(found) < 10  # the model's box_thresh (0.5) keeps some of its boxes
    status, raw = server.json("POST", "/v1/detect", data, {"Content-Type": "image/jpeg"})
    assert status == 200 and raw == detections_json("upload", (320, 200), found)
    body, headers = multipart({"image": ("page.jpg", data)})
    status, form = server.json("POST", "/v1/detect", body, headers)
    assert status == 200 and form == detections_json("page.jpg", (320, 200), found)
    status, _, text = server.request("POST", "/v1/detect?format=icdar", data, {"Content-Type": "image/png"})
    assert status == 200 and text.decode() == icdar_lines(found)
    status, receipt = server.json("POST", "/v1/detect?format=receipt-json", body, headers)
    assert status == 200 and receipt == json.loads(json.dumps({"images": {"page.jpg": receipt_words(found)}}))


def test_thresholds_per_request(server: Served, checkpoint: Path) -> None:
    from dbtk.infer.evaluate import detections_json

    data = page(2)
    everything = expected(checkpoint, data, box_thresh=0)
    status, query = server.json("POST", "/v1/detect?box_thresh=0", data, {"Content-Type": "image/jpeg"})
    assert status == 200 and query == detections_json("upload", (320, 200), everything)
    body, headers = multipart({"image": ("p.jpg", data)}, {"box_thresh": "0"})  # a form field works the same
    assert server.json("POST", "/v1/detect", body, headers)[1]["detections"] == query["detections"]
    default = server.json("POST", "/v1/detect", data, {"Content-Type": "image/jpeg"})[1]["detections"]
    assert len(default) < len(query["detections"])
    # box_thresh only filters by score: the page's slider relies on that
    assert default == [d for d in query["detections"] if d["score"] >= 0.5]
    high = server.json("POST", "/v1/detect?thresh=0.6&box_thresh=0", data, {"Content-Type": "image/jpeg"})[1]
    assert len(high["detections"]) < len(query["detections"])


def test_a_tiled_model_is_served_tiled(tmp_path: Path) -> None:
    """A model whose recipe tiles (eval.tile) answers what its Detector finds from stitched tiles, thresholds
    per request included: the page goes to the worker whole, not resized like the others."""
    from dbtk.infer.evaluate import detections_json

    tiled = blob_checkpoint(tmp_path / "tiled.safetensors", tile=128)
    data = page(8)
    with serving(tiled) as served:
        info = served.json("GET", "/v1/model")[1]["input"]
        assert info["tile"] == {"side": 128, "overlap": 32, "scale": 1.0}
        for query, box_thresh in (("", None), ("?box_thresh=0", 0)):
            found = expected(tiled, data, box_thresh)
            status, answer = served.json("POST", f"/v1/detect{query}", data, JPEG)
            assert status == 200 and answer == detections_json("upload", (320, 200), found) and len(found)


def test_concurrent_requests_share_batches(server: Served, checkpoint: Path) -> None:
    data = page(3)
    before = server.json("GET", "/healthz")[1]["batches"]
    answers: list[tuple[int, dict]] = []

    def client() -> None:
        answers.append(server.json("POST", "/v1/detect", data, {"Content-Type": "image/jpeg"}))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in answers] == [200] * 6
    assert all(body == answers[0][1] for _, body in answers)  # batched or not, the same answer
    after = server.json("GET", "/healthz")[1]["batches"]
    assert after["images"] - before["images"] == 6
    assert after["count"] - before["count"] < 6  # some of them shared a forward pass


def test_model_health_and_page(server: Served) -> None:
    status, info = server.json("GET", "/v1/model")
    assert status == 200
    assert info["model"] == "tiny.safetensors" and info["runtime"] == "torch" and info["device"] == "cpu"
    assert info["recipe"]["encoder"]["arch"] == "resnet18" and info["input"]["long_side"] == 128
    assert info["postprocess"]["box_thresh"] == 0.5 and info["limits"]["max_upload_bytes"] == 2**20
    status, health = server.json("GET", "/healthz")
    assert status == 200 and health["status"] == "ok"
    status, headers, html = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    assert b'src="http' not in html and b'href="http' not in html  # no external assets


# ---------------------------------------------------------------------------------------------- hostile requests
def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming width × height, then a little garbage: a decompression-bomb probe."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def large_webp() -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".webp", np.full((2000, 2500, 3), 200, np.uint8))  # 5 MP > the 4 MP limit
    assert ok
    return buffer.tobytes()


def raw_exchange(port: int, chunks: list[bytes], timeout: float = 30) -> tuple[int, dict]:
    """Send raw bytes (a server that answers early may stop reading: a broken pipe is fine), read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_reply(sock)


def read_reply(sock: socket.socket) -> tuple[int, dict]:
    """One HTTP response with a JSON body, read from a raw socket: (status, body)."""
    received = b""
    while True:
        head, found, body = received.partition(b"\r\n\r\n")
        if found:
            lines = head.decode("latin-1").lower().split("\r\n")
            length = next(int(line.split(":", 1)[1]) for line in lines if line.startswith("content-length:"))
            if len(body) >= length:
                return int(lines[0].split()[1]), json.loads(body[:length])
        part = sock.recv(65536)
        if not part:
            raise AssertionError(f"connection closed before a whole response: {received[:300]!r}")
        received += part


JPEG = {"Content-Type": "image/jpeg"}


def hostile_requests() -> list[tuple[str, str, str, bytes, dict[str, str], int, str]]:
    """(id, method, path, body, headers, status, reason) — every one must be refused with a JSON reason."""
    good = page(4)
    no_file, no_file_headers = multipart({}, {"box_thresh": "0.5"})
    two, two_headers = multipart({"a": ("a.jpg", good), "b": ("b.jpg", good)})
    return [
        ("empty body", "POST", "/v1/detect", b"", JPEG, 400, "empty"),
        ("truncated jpeg", "POST", "/v1/detect", good[: len(good) // 2], JPEG, 422, "truncated"),
        ("20000x20000 png header", "POST", "/v1/detect", png_header(20000, 20000), {"Content-Type": "image/png"}, 413, "too_large"),
        ("5 MP webp", "POST", "/v1/detect", large_webp(), {"Content-Type": "image/webp"}, 413, "too_large"),
        ("not an image", "POST", "/v1/detect", b"GIF89a but not really" * 20, {"Content-Type": "image/gif"}, 422, "corrupt"),
        ("text/plain", "POST", "/v1/detect", good, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("json", "POST", "/v1/detect", b'{"image": 1}', {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
        ("form-urlencoded (curl --data-binary)", "POST", "/v1/detect", good, {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ("box_thresh=abc", "POST", "/v1/detect?box_thresh=abc", good, JPEG, 400, "bad_parameter"),
        ("box_thresh=nan", "POST", "/v1/detect?box_thresh=nan", good, JPEG, 400, "bad_parameter"),
        ("box_thresh=2", "POST", "/v1/detect?box_thresh=2", good, JPEG, 400, "bad_parameter"),
        ("thresh=0", "POST", "/v1/detect?thresh=0", good, JPEG, 400, "bad_parameter"),
        ("thresh=-inf", "POST", "/v1/detect?thresh=-inf", good, JPEG, 400, "bad_parameter"),
        ("format=xml", "POST", "/v1/detect?format=xml", good, JPEG, 400, "bad_parameter"),
        ("unknown parameter", "POST", "/v1/detect?box_tresh=0.1", good, JPEG, 400, "bad_parameter"),
        ("form field box_thresh=x", "POST", "/v1/detect", *multipart({"image": ("p.jpg", good)}, {"box_thresh": "x"}), 400, "bad_parameter"),
        ("multipart without boundary", "POST", "/v1/detect", good, {"Content-Type": "multipart/form-data"}, 400, "bad_multipart"),
        ("multipart without a file", "POST", "/v1/detect", no_file, no_file_headers, 400, "bad_multipart"),
        ("multipart with two files", "POST", "/v1/detect", two, two_headers, 400, "bad_multipart"),
        ("multipart garbage", "POST", "/v1/detect", b"--x\r\nnot headers at all", {"Content-Type": "multipart/form-data; boundary=x"}, 400, "bad_multipart"),
        ("GET /v1/detect", "GET", "/v1/detect", b"", {}, 405, "method_not_allowed"),
        ("unknown path", "GET", "/v2/detect", b"", {}, 404, "not_found"),
        # another spelling of a path is an unknown path, not a 307 redirect
        ("POST /v1/detect/", "POST", "/v1/detect/", good, JPEG, 404, "not_found"),
        ("GET /v1/detect/", "GET", "/v1/detect/", b"", {}, 404, "not_found"),
        ("GET /healthz/", "GET", "/healthz/", b"", {}, 404, "not_found"),
        # a parameter given twice: either value would be a guess
        ("box_thresh twice", "POST", "/v1/detect?box_thresh=0.5&box_thresh=0.9", good, JPEG, 400, "bad_parameter"),
        ("format twice", "POST", "/v1/detect?format=icdar&format=json", good, JPEG, 400, "bad_parameter"),
        ("query and form field", "POST", "/v1/detect?box_thresh=0.2", *multipart({"image": ("p.jpg", good)}, {"box_thresh": "0.9"}), 400, "bad_parameter"),
        ("Content-Type ;;;===", "POST", "/v1/detect", good, {"Content-Type": ";;;==="}, 415, "unsupported_media_type"),
    ]


def test_hostile_requests_get_4xx_json_and_the_server_stays_healthy(server: Served) -> None:
    before = server.json("GET", "/healthz")[1]["requests"]["rejected"]
    cases = hostile_requests()
    wrong = []
    for name, method, path, body, headers, status, reason in cases:
        got_status, got = server.json(method, path, body or None, headers)
        if (got_status, got.get("reason")) != (status, reason) or not got.get("error"):
            wrong.append(f"{name}: expected {status} {reason}, got {got_status} {got}")
    # an upload over the byte limit: refused from its declared length before a byte is read ...
    oversized = [b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5000000\r\n\r\n"]
    status, got = raw_exchange(server.port, oversized)
    if (status, got["reason"]) != (413, "upload_too_large"):
        wrong.append(f"declared oversized upload: {status} {got}")
    # ... or, sent chunked without a length, as soon as it passes the limit
    chunk = b"\xff" * 65536
    chunked = [b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"]
    chunked += [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * 20 + [b"0\r\n\r\n"]
    status, got = raw_exchange(server.port, chunked)
    if (status, got["reason"]) != (413, "upload_too_large"):
        wrong.append(f"chunked oversized upload: {status} {got}")
    assert not wrong, "\n".join(wrong)
    assert "';;;==='" in server.json("POST", "/v1/detect", page(4), {"Content-Type": ";;;==="})[1]["error"]  # what was sent
    assert "given 2 times" in server.json("POST", "/v1/detect?format=icdar&format=json", page(4), JPEG)[1]["error"]
    # A Content-Length that is not a length fails in uvicorn's HTTP parser, before the app: plain text, not
    # counted by /healthz (docs/serve.md says so).
    for length in (b"-1", b"99999999999999999999999"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: " + length + b"\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    health = server.json("GET", "/healthz")[1]
    counted = sum(health["requests"]["rejected"].values()) - sum(before.values())
    assert health["status"] == "ok" and counted == len(cases) + 4
    assert server.json("POST", "/v1/detect", page(4), JPEG)[0] == 200  # still serving
    assert server.process.poll() is None and "Traceback" not in "".join(server.stderr)


def test_slow_clients_get_408_and_a_full_queue_503(server: Served) -> None:
    """Six uploads that never finish fill the queue (6): the next request is refused at once with 503, and
    after the 3 s request timeout each slow client gets 408, and a client still sending its headers is
    disconnected — then the server serves again."""
    head = b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
    before = server.json("GET", "/healthz")[1]["requests"]["rejected"]
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(6)]
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)  # never finishes its headers
    stalled.sendall(head[:30])
    try:
        for sock in slow:
            sock.sendall(head + b"\xff\xd8" + b"\x00" * 10)
        deadline = time.monotonic() + 10
        while server.json("GET", "/healthz")[1]["requests"]["in_flight"] < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        status, _, body = server.request("POST", "/v1/detect", page(5), JPEG)
        assert (status, json.loads(body)["reason"]) == (503, "busy") and time.monotonic() - start < 2
        replies = [read_reply(sock) for sock in slow]
        assert [(status, body["reason"]) for status, body in replies] == [(408, "slow_upload")] * 6
        stalled.settimeout(5)
        assert stalled.recv(100) == b""  # closed: no request head within the timeout (no request, no answer)
    finally:
        for sock in (*slow, stalled):
            sock.close()
    rejected = server.json("GET", "/healthz")[1]["requests"]["rejected"]
    assert {k: rejected[k] - before.get(k, 0) for k in ("busy", "slow_upload")} == {"busy": 1, "slow_upload": 6}
    assert server.json("POST", "/v1/detect", page(5), JPEG)[0] == 200


# ---------------------------------------------------------------------------------------------- the process
def test_sigterm_drains_in_flight_requests_and_exits_0(checkpoint: Path, tmp_path: Path) -> None:
    """Served from an ONNX export (no torch in the server): six requests wait in a batch (max wait 1 s) when
    SIGTERM arrives; every one is answered, then the process exits 0."""
    pytest.importorskip("onnxruntime")
    from dbtk.infer.export import export_onnx

    onnx_file = tmp_path / "tiny.onnx"
    export_onnx(checkpoint, onnx_file)
    with serving(onnx_file, "--max-wait-ms", "1000", "--max-batch", "8") as served:
        assert served.json("GET", "/v1/model")[1]["runtime"] == "onnxruntime"
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(served.request("POST", "/v1/detect", page(6), JPEG)[0]))
                   for _ in range(6)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while served.json("GET", "/healthz")[1]["requests"]["in_flight"] < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        served.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=30)
        assert served.process.wait(timeout=30) == 0
    assert results == [200] * 6
    assert "stopped: 6 requests answered" in "".join(served.stderr)


def test_cli_errors_are_one_line_and_check_exits(checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run_dbtk("serve", str(checkpoint), "--port", str(taken.getsockname()[1]))
    assert proc.returncode == 2 and "error: cannot listen on 127.0.0.1:" in proc.stderr and "--port 0" in proc.stderr
    assert "loading" not in proc.stderr and "Traceback" not in proc.stderr  # refused before the model loads
    ready = run_dbtk("serve", str(checkpoint), "--port", "0", "--device", "cpu", "--check")  # loads, binds, exits
    assert ready.returncode == 0 and "ready" in ready.stdout and "serving" not in ready.stderr, ready.stderr

    import importlib.util

    from dbtk.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(checkpoint)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "needs the serve extra (uvicorn not installed)" in err and 'pip install "dbtk[serve]"' in err


def test_help_imports_no_web_stack() -> None:
    modules = imported_modules(["serve", "--help"])
    assert "dbtk" in modules and not modules & {"starlette", "uvicorn", "python_multipart", "anyio", "numpy", "torch"}


# ---------------------------------------------------------------------------------------------- the batcher
class FakeDetector:
    """Records each forward's batch; a map per image is its size filled with the batch length."""

    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        self.runtime = type("Runtime", (), {"input_size": None})()
        self.calls: list[list[tuple[int, int]]] = []
        self.fail, self.delay = fail, delay

    def probability_maps(self, batch):  # noqa: ANN001, ANN201
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("out of memory")
        self.calls.append([p.tensor.shape[:2] for p in batch])
        return [np.full(p.tensor.shape[:2], len(batch), np.float32) for p in batch]


def prepared(height: int, width: int):  # noqa: ANN201
    from dbtk.infer.detector import Prepared

    return Prepared(np.zeros((height, width, 3), np.uint8), (1.0, 1.0), (width, height))


def test_batcher_groups_equal_sizes_and_bounds_batches() -> None:
    from dbtk.serve.batcher import MicroBatcher

    fake = FakeDetector()
    batcher = MicroBatcher(fake, max_batch=4, max_wait=0.2, max_queue=16)
    futures = [batcher.submit(prepared(32, 64 if i % 3 else 96)) for i in range(7)]  # queued before the worker starts
    batcher.start()
    results = [future.result(timeout=10) for future in futures]
    batcher.close()
    assert [len(call) for call in fake.calls] == [2, 2, 2, 1]  # batches of ≤ 4 (0-3, 4-6), each split by size
    assert all(len(set(call)) == 1 for call in fake.calls)  # no image is padded by another
    assert [r.shape for r in results] == [(32, 96) if i % 3 == 0 else (32, 64) for i in range(7)]
    assert batcher.stats.images == 7 and batcher.stats.batches == 4


def test_batcher_skips_cancelled_fails_per_batch_and_refuses_when_full() -> None:
    from dbtk.serve.batcher import Busy, MicroBatcher

    fake = FakeDetector()
    batcher = MicroBatcher(fake, max_batch=8, max_wait=0.0, max_queue=2)
    first, second = batcher.submit(prepared(32, 32)), batcher.submit(prepared(32, 32))
    with pytest.raises(Busy):
        batcher.submit(prepared(32, 32))
    assert first.cancel()  # a request that timed out while queued
    batcher.start()
    assert second.result(timeout=10).shape == (32, 32)
    batcher.close()
    assert fake.calls == [[(32, 32)]] and batcher.stats.cancelled == 1

    failing = MicroBatcher(FakeDetector(fail=True), max_batch=8, max_wait=0.0)
    failing.start()
    future: Future = failing.submit(prepared(32, 32))
    with pytest.raises(RuntimeError, match="out of memory"):
        future.result(timeout=10)
    assert failing.submit(prepared(32, 32)).exception(timeout=10) is not None  # the worker lives on
    failing.close()


def test_batcher_runs_jobs_alone_between_batches() -> None:
    """A job (a tiled page) runs on the worker before the forward of the images drained with it; its failure is
    its own future's."""
    from dbtk.serve.batcher import MicroBatcher

    fake = FakeDetector()
    batcher = MicroBatcher(fake, max_batch=8, max_wait=0.2)
    first = batcher.submit(prepared(32, 32))
    job = batcher.run(lambda: len(fake.calls))
    failing = batcher.run(lambda: 1 / 0)
    second = batcher.submit(prepared(32, 32))
    batcher.start()
    assert job.result(timeout=10) == 0 and first.result(timeout=10).shape == second.result(timeout=10).shape
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)
    batcher.close()
    assert fake.calls == [[(32, 32), (32, 32)]]  # the two images still shared one forward
