"""Running the app: uvicorn on the socket ``dbtk serve`` bound, draining on Ctrl-C or SIGTERM and then returning."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from dbtk.serve.app import Limits


class Server(uvicorn.Server):
    """uvicorn's server, except that a Ctrl-C or SIGTERM only asks it to stop, and stalled connections are closed.

    On a signal uvicorn stops accepting, lets the requests in flight finish, runs the app's shutdown — and then
    re-raises the signal, so the process would die of SIGTERM (or report Ctrl-C as an interruption) after a clean
    drain. Here :meth:`run` returns instead and the command exits 0. A second Ctrl-C still forces the exit.
    """

    def __init__(self, config: uvicorn.Config, head_timeout: float) -> None:
        super().__init__(config)
        self.head_timeout = head_timeout
        self._waiting: dict[object, tuple[object, float]] = {}  # connection -> (request it waits after, since)

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # uvicorn ticks every 0.1 s
            self._close_stalled()
        return await super().on_tick(counter)

    def _close_stalled(self) -> None:
        """Close connections that have not sent a whole request head within ``head_timeout`` seconds.

        The app bounds a request from its head on (slow bodies get 408), but uvicorn times a connection out only
        after a response (keep-alive), and any byte received cancels that: a client that trickles its headers
        (slowloris) would hold its connection for ever, and enough of them would fill ``limit_concurrency``.
        """
        now = time.monotonic()
        waiting = {}
        for connection in self.server_state.connections:
            request = getattr(connection, "cycle", None)  # the request being answered, or the last one
            if request is not None and not request.response_complete:
                continue  # a request is in the app: its own deadline applies
            previous = self._waiting.get(connection)
            since = previous[1] if previous is not None and previous[0] is request else now
            waiting[connection] = (request, since)
            if now - since > self.head_timeout:
                connection.transport.close()
        self._waiting = waiting

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
    server = Server(config, head_timeout=limits.timeout)
    server.run(sockets=[listener])
    return server.started
