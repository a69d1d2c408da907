"""Serving an ASGI app on one port, the way every HTTP channel here does it.

The command line loads the engine (and refuses a broken model folder) before a channel runs;
:func:`listen` then binds the port, so "in use" is a clear error and port 0 picks a free one.
:func:`serve` runs uvicorn on that socket, prints ``NAME on URL`` once connections are accepted,
and stops gracefully on Ctrl+C or SIGTERM with exit code 0 (a second Ctrl+C stops at once).
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

from chatbot import ChannelError


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


def serve(app: Any, listener: socket.socket, *, announce: str, grace_s: int = 2) -> None:
    """Serve ``app`` on ``listener`` until Ctrl+C or SIGTERM; print ``announce`` once it is up.

    Requests still open after ``grace_s`` seconds of shutdown (a browser tab's event stream) are
    cancelled quietly: that is how a server with open tabs stops, not an error.
    """
    logging.getLogger("uvicorn.error").addFilter(_quiet_cancelled_requests)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=grace_s, lifespan="on"
    )
    server = _Server(config, announce=announce)
    asyncio.run(server.serve(sockets=[listener]))


def _quiet_cancelled_requests(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, asyncio.CancelledError):
        return False
    return "timeout graceful shutdown exceeded" not in record.getMessage()


class _Server(uvicorn.Server):
    """uvicorn's server, announcing itself once it accepts connections and exiting 0 on a signal."""

    def __init__(self, config: uvicorn.Config, *, announce: str) -> None:
        super().__init__(config)
        self.announce = announce

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
