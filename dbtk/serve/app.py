"""The ASGI app behind ``dbtk serve``: ``POST /v1/detect``, ``GET /v1/model``, ``GET /healthz`` and the page at ``/``.

Every request is bounded before it costs anything: its declared size is checked before its body is read, the
body is read against a byte limit and a deadline (slow clients get 408), an image's pixel count is checked from
its header before it is decoded, and at most ``max_queue`` detect requests are admitted at once (the rest get
503 at once, without their bodies being read). Bad input of any kind is a 4xx JSON answer
``{"error": message, "reason": code}`` — never a 500, never a dead process. Uploads stay in memory: nothing is
written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dbtk import __version__
from dbtk.errors import did_you_mean
from dbtk.infer.detector import Detector
from dbtk.serve.batcher import Busy, MicroBatcher

if TYPE_CHECKING:
    import numpy as np

    from dbtk.infer.detector import Prepared
    from dbtk.infer.postprocess import Detections
    from dbtk.recipe import Postprocess

log = logging.getLogger("dbtk.serve")

#: Output formats of ``/v1/detect``: those of ``dbtk predict --format``.
FORMATS = ("json", "icdar", "receipt-json")
#: Query or form fields ``/v1/detect`` understands; anything else is refused with a did-you-mean.
FIELDS = ("box_thresh", "thresh", "format")
#: Upload media types taken as the image itself (a missing Content-Type is read as octet-stream, as HTTP says).
RAW_TYPES = ("application/octet-stream",)
#: A multipart upload has one image and a few fields; more parts than this is not a client of this API.
MAX_PARTS = 8


@dataclass(frozen=True)
class Limits:
    """What one request may cost. Defaults suit photos and scanned pages on a small machine."""

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000  # a 7k × 5.7k photo; decoded it is 120 MB of RGB
    max_queue: int = 64  # detect requests admitted at once (reading, decoding, waiting, post-processing)
    timeout: float = 30.0  # seconds from arrival to answer: upload, queue and inference together
    workers: int = 4  # threads decoding and post-processing; memory is bounded by workers × max_pixels × 3 bytes


class ApiError(Exception):
    """A request refused with a reason: becomes ``{"error": message, "reason": reason}`` with ``status``."""

    def __init__(self, status: int, reason: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, dict(headers or {})


#: Image problems (dbtk.data.images reasons) → HTTP status: too big is 413, unusable content 422, nothing 400.
IMAGE_STATUS = {"empty": 400, "too_large": 413, "truncated": 422, "corrupt": 422}


@dataclass
class Options:
    """One request's choices: post-processing thresholds (the model's unless given) and the output format."""

    postprocess: Postprocess
    format: str = "json"


def parse_options(fields: Sequence[tuple[str, str]], defaults: Postprocess) -> Options:
    """Validate ``box_thresh``, ``thresh`` and ``format`` (query and form fields, as (name, value) pairs in the
    order sent); 400 naming the bad one. A parameter given twice (``?format=icdar&format=json``, or in the query
    and as a form field) is refused: answering with either value would be a guess the client cannot see."""
    changes: dict[str, float] = {}
    out_format = "json"
    counts = Counter(key for key, _ in fields)
    for key, value in fields:
        if counts[key] > 1 and key in FIELDS:
            raise ApiError(400, "bad_parameter", f"parameter '{key}' is given {counts[key]} times (query and form fields together); give it once")
        if key not in FIELDS:
            raise ApiError(400, "bad_parameter", f"unknown parameter '{key}'{did_you_mean(key, FIELDS)}; known: {', '.join(FIELDS)}")
        if key == "format":
            if value not in FORMATS:
                raise ApiError(400, "bad_parameter", f"format must be one of {', '.join(FORMATS)}, got {value[:40]!r}")
            out_format = value
            continue
        try:
            number = float(value)
        except ValueError:
            number = math.nan  # refused below, with the value
        # The recipe's ranges: thresh binarises the map (0 or 1 would keep all or nothing); box_thresh 0 keeps all.
        # nan and ±inf fail both comparisons.
        if not (0 < number < 1 if key == "thresh" else 0 <= number <= 1):
            bounds = "0 < thresh < 1" if key == "thresh" else "0 <= box_thresh <= 1"
            raise ApiError(400, "bad_parameter", f"{key} must be a number with {bounds}, got {value[:40]!r}")
        changes[key] = number
    return Options(attrs.evolve(defaults, **changes), out_format)


@dataclass
class Upload:
    data: bytes
    name: str
    fields: list[tuple[str, str]]  # (name, value) in the order sent: a repeated field stays visible


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def parse_multipart(body: bytes, content_type: str) -> Upload:
    """The one file part (the image) and the text fields of a ``multipart/form-data`` body, in memory.

    python-multipart's streaming parser is used directly rather than through starlette's form parser, which
    spools files over 1 MB to a temporary file: an upload here is already bounded by the byte limit.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
    parts: list[dict[str, Any]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise ApiError(400, "bad_multipart", f"more than {MAX_PARTS} parts in one request")
        parts.append({"headers": {}, "data": []})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].append(data[start:end])

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
                 "on_header_end": on_header_end, "on_part_data": on_part_data}
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors (their types vary by version)
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
    files: list[tuple[str, bytes]] = []
    fields: list[tuple[str, str]] = []
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        data = b"".join(part["data"])
        if b"filename" in disposition:
            files.append((disposition[b"filename"].decode("utf-8", "replace") or "upload", data))
            continue
        try:
            fields.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            raise ApiError(400, "bad_parameter", f"form field '{name[:40]}' is not UTF-8 text") from None
    if len(files) != 1:
        raise ApiError(400, "bad_multipart", f"expected one file part (the image, e.g. curl -F image=@photo.jpg), got {len(files)}")
    filename, data = files[0]
    return Upload(data, Path(filename).name[:200], fields)


class Service:
    """One detector, its batcher and the counters ``/healthz`` reports; the routes are its methods."""

    def __init__(self, detector: Detector, model_path: str | Path, limits: Limits, batcher: MicroBatcher) -> None:
        self.detector = detector
        self.model_path = Path(model_path)
        self.limits = limits
        self.batcher = batcher
        self.workers = anyio.CapacityLimiter(limits.workers)
        self.started = time.monotonic()
        self.admitted = 0  # detect requests inside the app now (touched on the event loop only)
        self.served = 0
        self.rejected: Counter[str] = Counter()
        self.page = (resources.files("dbtk.serve") / "static" / "index.html").read_text(encoding="utf-8")

    # ------------------------------------------------------------------------------------------- routes
    async def detect(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.timeout
        sent = request.headers.get("content-type", "application/octet-stream")
        kind = media_type(sent)
        multipart = kind == "multipart/form-data"
        if not (multipart or kind.startswith("image/") or kind in RAW_TYPES):
            raise ApiError(415, "unsupported_media_type",  # the header as sent: its media type may be empty (";;;===")
                           f"Content-Type {sent[:60]!r} is not an image: send the image bytes as image/* or "
                           "application/octet-stream, or a multipart/form-data upload")
        query = request.query_params.multi_items()
        options = parse_options(query, self.detector.postprocess)  # cheap checks first
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limits.max_upload_bytes):
            raise self._too_big(declared) if declared.isdigit() else ApiError(400, "bad_request", "invalid Content-Length")
        if self.admitted >= self.limits.max_queue:
            raise ApiError(503, "busy", f"{self.admitted} requests are already being served; retry shortly", {"retry-after": "1"})
        self.admitted += 1
        try:
            body = await self._read_body(request, deadline)
            if multipart:
                upload = parse_multipart(body, request.headers["content-type"])
                options = parse_options([*query, *upload.fields], self.detector.postprocess)
            else:
                upload = Upload(body, "upload", [])
            image, prepared = await anyio.to_thread.run_sync(self._prepare, upload, limiter=self.workers)
            try:
                if prepared is None:  # a tiled model: its Detector cuts, forwards (tiles batched) and stitches the page
                    page = Detector(self.detector.runtime, attrs.evolve(self.detector.recipe, postprocess=options.postprocess))
                    future = self.batcher.run(lambda: page.detect_arrays([image])[0])
                else:
                    future = self.batcher.submit(prepared)
            except Busy:
                raise ApiError(503, "busy", "the inference queue is full; retry shortly", {"retry-after": "1"}) from None
            try:
                found = await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ApiError(503, "timeout", f"no answer within {self.limits.timeout:g} s: the server is overloaded",
                               {"retry-after": "1"}) from None
            except Exception as exc:  # noqa: BLE001 - the runtime failed on a valid image: a server error, logged
                log.error("inference failed: %s: %s", type(exc).__name__, exc)
                raise ApiError(500, "inference_failed", f"inference failed: {type(exc).__name__}") from None
            if prepared is not None:
                found = await anyio.to_thread.run_sync(self._postprocess, found, prepared, options, limiter=self.workers)
        finally:
            self.admitted -= 1
        self.served += 1
        return self._render(upload.name, (image.shape[1], image.shape[0]), found, options.format)

    async def model(self, _request: Request) -> Response:
        detector = self.detector
        recipe = detector.recipe
        runtime = detector.runtime
        session = getattr(runtime, "session", None)  # onnxruntime's; the torch runtime has a device instead
        from dbtk.infer.detector import STRIDE

        return JSONResponse({
            "model": self.model_path.name,
            "dbtk_version": __version__,
            "runtime": "onnxruntime" if session is not None else "torch",
            "device": session.get_providers()[0] if session is not None else str(getattr(runtime, "device", "cpu")),
            "recipe": {"name": recipe.name, "encoder": recipe.model.encoder.as_table(),
                       "decoder": recipe.model.decoder.as_table(), "head": recipe.model.head.as_table()},
            "input": {"pixels": "RGB uint8, EXIF orientation applied; normalisation is inside the model",
                      "long_side": detector.long_side, "stride": STRIDE,
                      "fixed_size": list(runtime.input_size) if runtime.input_size else None,
                      "tile": {"side": detector.tile, "overlap": detector.tile_overlap, "scale": detector.tile_scale}
                      if detector.tile else None},
            "postprocess": attrs.asdict(detector.postprocess),
            "output": {"points": "original-image pixels, clockwise from the top-left corner", "formats": list(FORMATS)},
            "batching": {"max_batch": self.batcher.max_batch, "max_wait_ms": self.batcher.max_wait * 1000},
            "limits": {"max_upload_bytes": self.limits.max_upload_bytes, "max_pixels": self.limits.max_pixels,
                       "max_queue": self.limits.max_queue, "timeout_s": self.limits.timeout},
        })

    async def health(self, _request: Request) -> Response:
        stats = self.batcher.stats
        return JSONResponse({
            "status": "ok",
            "uptime_s": round(time.monotonic() - self.started, 3),
            "requests": {"served": self.served, "in_flight": self.admitted, "queued": self.batcher.queued,
                         "rejected": dict(sorted(self.rejected.items()))},
            "batches": {"count": stats.batches, "images": stats.images, "mean_size": round(stats.mean_batch, 3),
                        "cancelled": stats.cancelled},
        })

    async def index(self, _request: Request) -> Response:
        # The page brings everything it uses: this policy makes any external asset a visible failure.
        policy = "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
        return HTMLResponse(self.page, headers={"content-security-policy": policy})

    # ------------------------------------------------------------------------------------------- pieces
    async def _read_body(self, request: Request, deadline: float) -> bytes:
        """The body, refused as soon as it passes the byte limit, and 408 when it has not arrived by the deadline."""
        chunks: list[bytes] = []
        size = 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.limits.max_upload_bytes:
                    raise self._too_big(f"more than {self.limits.max_upload_bytes}")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            raise ApiError(408, "slow_upload", f"the upload did not arrive within {self.limits.timeout:g} s") from None
        except ClientDisconnect:
            raise ApiError(400, "disconnected", "the client disconnected during the upload") from None
        return b"".join(chunks)

    def _too_big(self, size: str) -> ApiError:
        limit = self.limits.max_upload_bytes
        return ApiError(413, "upload_too_large", f"upload of {size} bytes exceeds the {limit:,}-byte limit")

    def _prepare(self, upload: Upload) -> tuple[np.ndarray, Prepared | None]:
        """Decode (header checks first: empty, too many pixels, truncated) and resize — unless the model tiles
        (``eval.tile``): its pages are cut by the Detector, not resized. On a worker thread."""
        import cv2

        from dbtk.data.images import ImageError, decode_image
        from dbtk.infer.detector import resize_for_inference

        try:
            image = decode_image(upload.data, upload.name, self.limits.max_pixels).image
        except ImageError as exc:
            raise ApiError(IMAGE_STATUS.get(exc.reason, 422), exc.reason, str(exc)) from None
        except cv2.error as exc:  # OpenCV's own pixel limit (set by dbtk serve) for formats without a header check
            if "MAX_IMAGE_PIXELS" in str(exc):
                raise ApiError(413, "too_large", f"{upload.name}: exceeds the {self.limits.max_pixels:,}-pixel limit") from None
            raise ApiError(422, "corrupt", f"{upload.name}: not a decodable image") from None
        return image, None if self.detector.tile else resize_for_inference(image, self.detector.long_side)

    def _postprocess(self, prob: np.ndarray, prepared: Prepared, options: Options) -> Detections:
        from dbtk.infer.postprocess import boxes_from_map

        return boxes_from_map(prob, options.postprocess, prepared.scale, prepared.original)

    def _render(self, name: str, size: tuple[int, int], detections: Detections, out_format: str) -> Response:
        """The body ``dbtk predict --format FORMAT`` would write for this image."""
        from dbtk.infer.evaluate import detections_json, icdar_lines, receipt_words

        if out_format == "icdar":
            return PlainTextResponse(icdar_lines(detections))
        if out_format == "receipt-json":
            return JSONResponse({"images": {name: receipt_words(detections)}})
        return JSONResponse(detections_json(name, size, detections))

    # ------------------------------------------------------------------------------------------- errors
    async def api_error(self, _request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        self.rejected[exc.reason] += 1
        return JSONResponse({"error": exc.message, "reason": exc.reason}, exc.status, headers=exc.headers)

    async def http_error(self, _request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (unknown path, wrong method) in the same JSON shape."""
        assert isinstance(exc, HTTPException)
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        self.rejected[reason] += 1
        return JSONResponse({"error": str(exc.detail), "reason": reason}, exc.status_code, headers=exc.headers)

    async def internal_error(self, _request: Request, exc: Exception) -> Response:
        """A bug, not bad input: still a JSON answer (uvicorn logs the traceback); the process keeps serving."""
        self.rejected["internal"] += 1
        return JSONResponse({"error": f"internal error: {type(exc).__name__}", "reason": "internal"}, 500)


def warm_up(detector: Detector) -> None:
    """One forward on a blank image before the port opens: the first request must not pay for lazy set-up
    (kernel selection, memory pools), or its latency would be a multiple of every later one's."""
    import numpy as np

    from dbtk.infer.detector import resize_for_inference

    side = detector.long_side
    detector.probability_maps([resize_for_inference(np.zeros((side, side, 3), np.uint8), side)])


def create_app(detector: Detector, model_path: str | Path, limits: Limits = Limits(), max_batch: int = 8,
               max_wait: float = 0.005) -> Starlette:
    """The app; its lifespan starts the batcher's worker and, at shutdown, lets it finish what is queued."""
    batcher = MicroBatcher(detector, max_batch, max_wait, limits.max_queue)
    service = Service(detector, model_path, limits, batcher)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(warm_up, detector)
        batcher.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(batcher.close)

    routes = [
        Route("/", service.index, methods=["GET"]),
        Route("/v1/detect", service.detect, methods=["POST"]),
        Route("/v1/model", service.model, methods=["GET"]),
        Route("/healthz", service.health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: service.api_error, HTTPException: service.http_error,
                                       Exception: service.internal_error})
    # /v1/detect/ is not /v1/detect: Starlette would answer 307 to the other spelling, a redirect clients follow
    # without their body (or not at all); refused as the unknown path it is (404, JSON), as docs/serve.md says.
    app.router.redirect_slashes = False
    app.state.service = service
    return app

