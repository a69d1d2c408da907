"""`chatbot serve --channel slack MODEL_DIR`: the bot in Slack, in Socket Mode or over HTTP.

With ``SLACK_APP_TOKEN`` set it connects out to Slack over a websocket (Socket Mode: no public
URL, nothing to open in a firewall). Otherwise it serves the Events API over HTTP at
``/slack/events`` (and ``/healthz``) on ``--host``/``--port``; every request's signature is
checked against ``SLACK_SIGNING_SECRET`` before anything else reads it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from typing import Any
from urllib.parse import parse_qs

from chatbot import Channel, Engine, configure_logging
from plugins.serving import Operations, drain, listen, serve, url_of
from plugins.slack.bot import BotSettings, SlackBot, web_client
from plugins.slack.settings import RedactingFilter, SlackSettings

EVENTS_PATH = "/slack/events"
DEFAULTS = BotSettings()
log = logging.getLogger("chatbot.slack")


class SlackChannel(Channel):
    """Answers direct messages and mentions in Slack threads (slack-bolt)."""

    summary = "a Slack app (Socket Mode or the Events API): chatbot serve --channel slack MODEL_DIR"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Slack (credentials come from SLACK_* environment variables)")
        group.add_argument("--host", default="127.0.0.1", help="HTTP mode: address to listen on (127.0.0.1)")
        group.add_argument("--port", type=int, default=3000, help="HTTP mode: port (3000; 0 = any free port)")
        group.add_argument(
            "--update-interval",
            type=float,
            default=DEFAULTS.update_interval,
            help="seconds between edits of a reply while it is written (default: %(default)s)",
        )
        group.add_argument(
            "--handover-text", default=DEFAULTS.handover_text, help="said when a person should take over"
        )
        group.add_argument(
            "--command", default=DEFAULTS.command, help="the slash command's name (default: %(default)s)"
        )

    def __init__(self, engine: Engine, options: argparse.Namespace) -> None:
        super().__init__(engine, options)
        self.slack = SlackSettings.from_environment()  # a missing variable stops start-up here
        _log_to_stderr(RedactingFilter(self.slack.secrets))
        self.bot = SlackBot(
            engine,
            self.slack,
            BotSettings(
                update_interval=max(0.0, getattr(options, "update_interval", DEFAULTS.update_interval)),
                handover_text=getattr(options, "handover_text", DEFAULTS.handover_text),
                command=getattr(options, "command", DEFAULTS.command),
            ),
        )

    def run(self) -> int:
        self.bot.start()  # watches the queue for the support channel, when one is set
        try:
            return self._socket_mode() if self.slack.socket_mode else self._http_mode()
        finally:
            self.bot.stop()

    def _http_mode(self) -> int:
        listener = listen(getattr(self.options, "host", "127.0.0.1"), getattr(self.options, "port", 3000))
        url = url_of(listener, EVENTS_PATH)
        serve(
            events_app(self.bot),
            listener,
            announce=f"slack app ({self.bot.bot_user_id}) serving events at {url}",
            engine=self.engine,
        )
        print("slack app stopped", flush=True)
        return 0

    def _socket_mode(self) -> int:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        assert self.slack.app_token is not None
        handler = SocketModeHandler(
            self.bot.app,
            self.slack.app_token,
            web_client=web_client(self.slack.app_token, self.slack.api_url),
            logger=logging.getLogger("chatbot.slack.socket"),
        )
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            handler.connect()
            print(
                f"slack app ({self.bot.bot_user_id}) connected in Socket Mode — press Ctrl+C to stop",
                flush=True,
            )
            stop.wait()
            drain(self.engine)
        finally:
            handler.close()
            for sig, handler_before in previous.items():
                signal.signal(sig, handler_before)
        print("slack app stopped", flush=True)
        return 0


def events_app(bot: SlackBot) -> Any:
    """The ASGI app of HTTP mode: ``POST /slack/events`` (events, commands), and ``/healthz``,
    ``/readyz`` and ``/metrics`` (:class:`~plugins.serving.Operations`)."""
    from slack_bolt import BoltRequest
    from slack_sdk.signature import SignatureVerifier
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    assert bot.slack.signing_secret is not None
    verifier = SignatureVerifier(bot.slack.signing_secret)

    async def events(request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not _signed(verifier, body, headers):
            log.warning("refused a request with a missing, wrong or stale signature")
            return PlainTextResponse("invalid signature\n", status_code=401)
        parsed = _parse(body, request.headers.get("content-type", ""))
        if parsed is None:
            log.warning("refused a malformed request body (%d bytes)", len(body))
            return PlainTextResponse("malformed request\n", status_code=400)
        bolt_request = BoltRequest(
            body=body.decode(), query=dict(request.query_params), headers=dict(headers)
        )
        answer = await run_in_threadpool(bot.app.dispatch, bolt_request)
        return Response(
            answer.body, status_code=answer.status, headers=answer.first_headers_without_set_cookie()
        )

    return Operations(Starlette(routes=[Route(EVENTS_PATH, events, methods=["POST"])]), bot.engine)


def _signed(verifier: Any, body: bytes, headers: dict[str, str]) -> bool:
    """Whether Slack signed this request, within the last five minutes (a garbled header is "no")."""
    try:
        return bool(verifier.is_valid_request(body, headers))
    except (ValueError, TypeError):
        return False


def _parse(body: bytes, content_type: str) -> dict[str, Any] | None:
    """The request's payload, or None when it is not what Slack sends (JSON or a form)."""
    try:
        text = body.decode()
        if content_type.startswith("application/json"):
            payload = json.loads(text)
            return payload if isinstance(payload, dict) and "type" in payload else None
        form = parse_qs(text, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    if "payload" in form:
        try:
            payload = json.loads(form["payload"][0])
        except ValueError:
            return None
        return payload if isinstance(payload, dict) else None
    return {k: v[0] for k, v in form.items()} if "command" in form or "ssl_check" in form else None


def _log_to_stderr(redact: RedactingFilter) -> None:
    """Log lines on standard error (text or JSON), secrets scrubbed; the SDKs' chatter kept to warnings."""
    configure_logging(filters=[redact])
