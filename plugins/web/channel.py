"""`chatbot serve --channel web MODEL_DIR`: the web chat, served by uvicorn on one port.

The engine is loaded (and a broken model folder refused) by the command line before this
channel runs, so no port is ever opened for a model that cannot answer. The port is bound here,
before the server starts, so "in use" is a clear error and ``--port 0`` picks a free one; the
line ``web chat on http://HOST:PORT`` is printed once the server accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from chatbot import Channel, ChannelError, Engine
from plugins.web.access import AUTH_VARIABLE, AccessMiddleware, Credentials
from plugins.web.page import ChatPage, PageSettings, gr

DEFAULTS = PageSettings()


class WebChannel(Channel):
    """A chat page in the browser (Gradio), streaming replies, one conversation per browser."""

    summary = "a web chat page (Gradio): chatbot serve --channel web MODEL_DIR"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("web chat")
        group.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
        group.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0 = any free port)")
        group.add_argument("--title", default=DEFAULTS.title, help="page title (default: %(default)r)")
        group.add_argument("--description", default="", help="a line under the title (markdown)")
        group.add_argument(
            "--example",
            action="append",
            default=None,
            metavar="TEXT",
            help="an example question shown on an empty chat (repeat it; default: the model card's)",
        )
        group.add_argument(
            "--handover-text",
            default=DEFAULTS.handover_text,
            help="shown under a reply a person should take over",
        )
        group.add_argument(
            "--concurrency",
            type=int,
            default=4,
            help="replies generated at once; more visitors wait in the queue (default: 4)",
        )
        group.add_argument(
            "--max-queue", type=int, default=100, help="visitors waiting at most (default: 100)"
        )
        group.add_argument(
            "--root-path", default="", help="the URL prefix when served behind a proxy, e.g. /chat"
        )

    def __init__(self, engine: Engine, options: argparse.Namespace) -> None:
        super().__init__(engine, options)
        self.credentials = Credentials.from_environment()  # a malformed value stops start-up
        for name in ("concurrency", "max_queue"):
            if getattr(options, name, 1) < 1:
                raise ChannelError(f"--{name.replace('_', '-')} must be at least 1")

    def settings(self) -> PageSettings:
        """The page's texts: flags first, then the model card, then the defaults."""
        card: dict[str, Any] = self.engine.folder.card
        examples = getattr(self.options, "example", None) or card.get("examples") or ()
        return PageSettings(
            title=getattr(self.options, "title", None) or DEFAULTS.title,
            description=getattr(self.options, "description", None) or "",
            examples=tuple(str(e) for e in examples if str(e).strip()),
            handover_text=getattr(self.options, "handover_text", DEFAULTS.handover_text),
        )

    def app(self) -> Any:
        """The ASGI app: the page mounted on FastAPI, behind the access middleware."""
        blocks = ChatPage(self.engine, self.settings()).blocks()
        blocks.queue(
            default_concurrency_limit=getattr(self.options, "concurrency", 4),
            max_size=getattr(self.options, "max_queue", 100),
        )
        app = gr.mount_gradio_app(
            _fastapi(),
            blocks,
            path="/",
            root_path=getattr(self.options, "root_path", "") or None,
            show_error=True,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            enable_monitoring=False,
            footer_links=["api"],
        )
        return AccessMiddleware(app, credentials=self.credentials)

    def run(self) -> int:
        # Gradio's own use of deprecated Starlette names is not the operator's concern.
        # (Starlette's deprecation warnings are UserWarnings.)
        for category in (DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", message=".*deprecated", category=category, module=r"gradio\.")
        logging.getLogger("uvicorn.error").addFilter(_quiet_cancelled_streams)
        host, port = getattr(self.options, "host", "127.0.0.1"), getattr(self.options, "port", 7860)
        listener = _bind(host, port)
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,  # then open page streams are closed
            lifespan="on",
        )
        server = _Server(config, url=_url(listener, getattr(self.options, "root_path", "")))
        server.auth_note = f" (basic auth from ${AUTH_VARIABLE})" if self.credentials else ""
        asyncio.run(server.serve(sockets=[listener]))
        print("web chat stopped", flush=True)
        return 0


def _quiet_cancelled_streams(record: logging.LogRecord) -> bool:
    """Drop the tracebacks of page streams cancelled at shutdown: an open browser tab keeps one
    open for good, so stopping cancels it after the grace period, and that is no error."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, asyncio.CancelledError):
        return False
    return "timeout graceful shutdown exceeded" not in record.getMessage()


def _fastapi() -> Any:
    from fastapi import FastAPI  # gradio's own dependency

    return FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


def _bind(host: str, port: int) -> socket.socket:
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


def _url(listener: socket.socket, root_path: str) -> str:
    host, port = listener.getsockname()[:2]
    shown = "127.0.0.1" if host == "0.0.0.0" else "[::1]" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return f"http://{shown}:{port}{root_path.rstrip('/')}/"


class _Server(uvicorn.Server):
    """uvicorn's server, saying where the chat is once it accepts connections."""

    def __init__(self, config: uvicorn.Config, *, url: str) -> None:
        super().__init__(config)
        self.url = url
        self.auth_note = ""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Ctrl+C or SIGTERM stops the server gracefully and the command exits 0 (a second Ctrl+C
        stops it at once); uvicorn's own handler would re-raise the signal afterwards."""
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
            print(f"web chat on {self.url}{self.auth_note} — press Ctrl+C to stop", flush=True)
            sys.stdout.flush()
