"""``dbtk serve``: load a model once and answer detection requests over HTTP (docs/serve.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from dbtk.cli import ExistingPath, FiniteFloatRange

if TYPE_CHECKING:
    import socket

#: Modules of the ``serve`` extra, checked before anything is loaded so a missing one is one clear error.
EXTRA = ("starlette", "uvicorn", "python_multipart")


@click.command()
@click.argument("model", type=ExistingPath(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface; put a proxy with TLS in front).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on; 0 picks a free one (printed).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--max-batch", type=click.IntRange(1, 256), default=8, show_default=True, help="Images per forward pass, at most.")
@click.option("--max-wait-ms", type=FiniteFloatRange(0, 1000), default=5.0, show_default=True, help="How long the first image of a batch waits for others.")
@click.option("--queue", "max_queue", type=click.IntRange(1, 10_000), default=64, show_default=True, help="Detect requests admitted at once; more get 503 at once.")
@click.option("--max-upload-mb", type=FiniteFloatRange(0.001, 1024), default=20.0, show_default=True, help="Largest request body (MiB).")
@click.option("--max-pixels", type=click.IntRange(1, 200_000_000), default=40_000_000, show_default=True, help="Largest image (width × height), checked before decoding.")
@click.option("--timeout", type=FiniteFloatRange(0.1, 3600), default=30.0, show_default=True, help="Seconds a request may take, upload included (slow uploads get 408).")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Threads decoding and post-processing images.")
@click.option("--check", is_flag=True, help="Bind the port, load the model, run one forward, then exit 0 instead of serving (a deployment check).")
def serve(model: str, host: str, port: int, device: str, max_batch: int, max_wait_ms: float, max_queue: int,
          max_upload_mb: float, max_pixels: int, timeout: float, workers: int, check: bool) -> None:
    """Serve MODEL (a checkpoint, a bundle or an .onnx export) over HTTP until Ctrl-C or SIGTERM.

    POST /v1/detect (image bytes or a multipart upload) answers the JSON of 'dbtk predict --format json';
    GET / is a page to try it in a browser. The model is loaded once; concurrent requests share forward passes.
    Ctrl-C or SIGTERM stops accepting, answers the requests in flight and exits 0.
    """
    import importlib.util
    import os

    from dbtk.cli import _ui
    from dbtk.errors import DbtkError

    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise DbtkError(f"dbtk serve needs the serve extra ({', '.join(missing)} not installed)", hint='pip install "dbtk[serve]"')
    listener = _bind(host, port)
    # OpenCV refuses images over this many pixels while decoding: the guard for formats whose size dbtk cannot read
    # from the header (WebP, TIFF, BMP ...). Set before cv2 is first imported, which reads it.
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max_pixels)
    # Forwards alternate with decoding and post-processing on other threads: OpenMP workers that spin after each
    # forward take those threads' cores (on 2 cores, 61 → 81 requests/s with passive waiting; docs/benchmarks.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _ui.step(_ui.loading_message(model))

    from dbtk.infer.detector import Detector
    from dbtk.serve.app import Limits, create_app
    from dbtk.serve.server import run

    detector = Detector.load(model, device=device)
    limits = Limits(int(max_upload_mb * 2**20), max_pixels, max_queue, timeout, workers)
    app = create_app(detector, model, limits, max_batch, max_wait_ms / 1000)
    bound_host, bound_port = listener.getsockname()[:2]
    url = f"http://[{bound_host}]:{bound_port}" if ":" in bound_host else f"http://{bound_host}:{bound_port}"
    if check:
        from dbtk.serve.app import warm_up

        warm_up(detector)
        listener.close()
        _ui.console().print(f"[green]✓[/] {model} loads and runs, and {url} can be served: ready")
        return
    listener.listen(2048)  # from here connections wait in the backlog while the app warms up, none is refused
    _ui.step(f"serving {model} on {url} (Ctrl-C to stop)")
    if not run(app, listener, limits):
        raise DbtkError("the server did not start", hint="the messages above say why; add --debug before the command for details")
    service = app.state.service
    _ui.step(f"stopped: {service.served} requests answered, {sum(service.rejected.values())} refused")


def _bind(host: str, port: int) -> socket.socket:
    """Bind (not yet listen) before the model loads: a taken port is an instant error, not one after a long load."""
    import errno
    import socket

    from dbtk.errors import DbtkError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise DbtkError(f"cannot listen on {host}: {exc.strerror}", hint="--host takes an address or a host name of this machine") from None
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        hints = {
            errno.EADDRINUSE: "another program uses that port: pick another with --port, or --port 0 for a free one",
            errno.EADDRNOTAVAIL: "--host must be an address of this machine: 127.0.0.1 (this machine only) or 0.0.0.0 (all)",
            errno.EACCES: "ports below 1024 need privileges: use a port above 1023",
        }
        raise DbtkError(f"cannot listen on {host}:{port}: {exc.strerror}", hint=hints.get(exc.errno or 0)) from None
    return listener

