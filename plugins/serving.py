"""Serving an ASGI app on one port, the way every HTTP channel here does it.

The command line loads the engine (and refuses a broken model folder) before a channel runs;
:func:`listen` then binds the port, so "in use" is a clear error and port 0 picks a free one.
:func:`serve` runs uvicorn on that socket, prints ``NAME on URL`` once connections are accepted,
and stops gracefully on Ctrl+C or SIGTERM with exit code 0 (a second Ctrl+C stops at once).
:class:`Operations` puts ``/healthz``, ``/readyz`` and ``/metrics`` in front of a channel's app.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from chatbot import ChannelError, Engine

OPERATIONS_PATHS = ("/healthz", "/readyz", "/metrics")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port), or a ChannelError saying why not."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except socket.gaierror as error:
        raise ChannelError(f"cannot listen on {host!r}: {error.strerror}", hint="check --host") from error
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ChannelError(
                f"port {port} on {host} is already in use",
                hint="stop what uses it or choose another port with --port (0 picks a free one)",
            ) from error
        raise ChannelError(
            f"cannot listen on {host}:{port}: {error.strerror}", hint="check --host and --port"
        ) from error


def url_of(listener: socket.socket, path: str = "/") -> str:
    """The address a person would open for ``listener`` (a wildcard address shown as loopback)."""
    host, port = listener.getsockname()[:2]
    shown = "127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}{path}"


DRAIN_S = 30.0  # how long a stopping server lets the replies in flight finish


def drain(engine: Engine, drain_s: float = DRAIN_S) -> int:
    """Let ``engine``'s replies in flight finish (up to ``drain_s``), saying so; how many did not."""
    print(f"stopping: finishing the replies in progress (up to {drain_s:g} s)", flush=True)
    left = engine.wait_idle(drain_s)
    if left:
        print(f"stopping: {left} replies did not finish in {drain_s:g} s", flush=True)
    return left


def serve(
    app: Any,
    listener: socket.socket,
    *,
    announce: str,
    grace_s: int = 2,
    engine: Engine | None = None,
    drain_s: float = DRAIN_S,
) -> None:
    """Serve ``app`` on ``listener`` until Ctrl+C or SIGTERM; print ``announce`` once it is up.

    Stopping closes the port first (no new connections), then lets the ``engine``'s replies in
    flight finish for up to ``drain_s`` seconds, then closes the connections: requests still
    open after ``grace_s`` more seconds (a browser tab's event stream) are cancelled quietly:
    that is how a server with open tabs stops, not an error.
    """
    logging.getLogger("uvicorn.error").addFilter(_quiet_cancelled_requests)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=grace_s, lifespan="on"
    )
    server = _Server(config, announce=announce, engine=engine, drain_s=drain_s)
    asyncio.run(server.serve(sockets=[listener]))


def _quiet_cancelled_requests(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, asyncio.CancelledError):
        return False
    return "timeout graceful shutdown exceeded" not in record.getMessage()


class _Server(uvicorn.Server):
    """uvicorn's server, announcing itself once it accepts connections and exiting 0 on a signal."""

    def __init__(
        self, config: uvicorn.Config, *, announce: str, engine: Engine | None = None, drain_s: float = DRAIN_S
    ) -> None:
        super().__init__(config)
        self.announce = announce
        self.engine = engine
        self.drain_s = drain_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # no new connections from here on
            server.close()
        if self.engine is not None and not self.force_exit:
            await asyncio.to_thread(drain, self.engine, self.drain_s)
        await super().shutdown(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own handler re-raises the signal after shutdown (exit 130); a service that
        # was asked to stop and did has succeeded.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        self.force_exit = self.should_exit and sig == signal.SIGINT
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"{self.announce} — press Ctrl+C to stop", flush=True)


class Operations:
    """An ASGI app: the operator's endpoints in front of a channel's own ``app``.

    * ``GET /healthz``: 200 while the process serves (liveness);
    * ``GET /readyz``: 200 when the engine can answer (model loaded, store reachable), else 503
      with the reason (readiness: a load balancer stops sending customers);
    * ``GET /metrics``: the engine's Prometheus metrics (:mod:`chatbot.metrics`).

    They bypass the channel's own access rules (probes carry no password); everything else
    goes to ``app``.
    """

    def __init__(self, app: Any, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") in OPERATIONS_PATHS:
            status, content_type, body = await self._answer(scope["path"])
            headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    async def _answer(self, path: str) -> tuple[int, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path == "/healthz":
            return 200, text, b"ok\n"
        if path == "/readyz":
            problems = await asyncio.to_thread(self.engine.ready)  # the store may take a while to answer
            if problems:
                return 503, text, ("not ready: " + "; ".join(problems) + "\n").encode()
            return 200, text, b"ready\n"
        return 200, self.engine.metrics.content_type, self.engine.metrics.render()
