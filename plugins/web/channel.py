"""`chatbot serve --channel web MODEL_DIR`: the web chat, served by uvicorn on one port.

The engine is loaded (and a broken model folder refused) by the command line before this
channel runs, so no port is ever opened for a model that cannot answer (see
:mod:`plugins.serving`). The line ``web chat on http://HOST:PORT/`` is printed once the server
accepts connections.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from chatbot import Channel, ChannelError, Engine
from plugins.serving import Operations, listen, serve, url_of
from plugins.web.access import AUTH_VARIABLE, AccessMiddleware, Credentials
from plugins.web.page import ChatPage, PageSettings, gr
from plugins.web.staff import PREFIX, StaffConsole, WithConsole
from plugins.web.staff_access import STAFF_VARIABLE, StaffAccounts

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
        self.staff = StaffAccounts.from_environment()  # the staff console: on when accounts are set
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
        chat = AccessMiddleware(app, credentials=self.credentials)
        root_path = getattr(self.options, "root_path", "") or ""
        console = StaffConsole(self.engine, self.staff, root_path=root_path).app() if self.staff else None
        return Operations(WithConsole(chat, console), self.engine)

    def run(self) -> int:
        # Gradio's own use of deprecated Starlette names is not the operator's concern.
        # (Starlette's deprecation warnings are UserWarnings.)
        for category in (DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", message=".*deprecated", category=category, module=r"gradio\.")
        root_path = getattr(self.options, "root_path", "") or ""
        listener = listen(getattr(self.options, "host", "127.0.0.1"), getattr(self.options, "port", 7860))
        auth = f" (basic auth from ${AUTH_VARIABLE})" if self.credentials else ""
        base = root_path.rstrip("/")
        if self.staff:
            staff = len(self.staff.passwords)
            console = f" and its staff console on {url_of(listener, base + PREFIX + '/')} ({staff} staff)"
        else:
            console = f" (no staff console: set ${STAFF_VARIABLE} to have one)"
        serve(
            self.app(),
            listener,
            announce=f"web chat on {url_of(listener, base + '/')}{auth}{console}",
            engine=self.engine,
        )
        print("web chat stopped", flush=True)
        return 0


def _fastapi() -> Any:
    from fastapi import FastAPI  # gradio's own dependency

    return FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
