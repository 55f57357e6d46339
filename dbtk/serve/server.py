"""Running the app: uvicorn on the socket ``dbtk serve`` bound, draining on Ctrl-C or SIGTERM and then returning."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from dbtk.serve.app import Limits


class Server(uvicorn.Server):
    """uvicorn's server, except that a Ctrl-C or SIGTERM only asks it to stop.

    On a signal uvicorn stops accepting, lets the requests in flight finish, runs the app's shutdown — and then
    re-raises the signal, so the process would die of SIGTERM (or report Ctrl-C as an interruption) after a clean
    drain. Here :meth:`run` returns instead and the command exits 0. A second Ctrl-C still forces the exit.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(app: Starlette, listener: socket.socket, limits: Limits) -> bool:
    """Serve until a signal; False when the server never started (its error is already logged)."""
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on",
        timeout_keep_alive=5,  # idle keep-alive connections are closed, so they cannot pile up
        limit_concurrency=max(4 * limits.max_queue, 64),  # connections beyond this get uvicorn's own 503
        timeout_graceful_shutdown=limits.timeout + 5,  # requests in flight finish; a stuck client cannot block exit
    )
    server = Server(config)
    server.run(sockets=[listener])
    return server.started
