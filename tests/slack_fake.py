"""A local stand-in for Slack's cloud: a real HTTP Web API server and a real Socket Mode websocket server.

Unmodified clients talk to it::

    with FakeSlack() as slack:
        client = WebClient(token=slack.bot_token, base_url=slack.api_url)
        handler = SocketModeHandler(app, slack.app_token, web_client=WebClient(base_url=slack.api_url))
        handler.connect()
        envelope_id = slack.socket.send_event(app_mention_event("<@UBOT> hi", ts="1.000001"), event_id="Ev1")
        slack.socket.wait_for_ack(envelope_id)
        slack.wait_for(lambda s: len(s.messages) == 1)
        handler.close()  # before the fake: a client whose server goes away first keeps trying to reconnect

The Web API answers ``POST /api/<method>`` (form or JSON bodies, token in ``Authorization: Bearer``), records
every call (:attr:`FakeSlack.calls`) and keeps the messages the bot posts (:attr:`FakeSlack.messages`).
Socket Mode (:attr:`FakeSlack.socket`) sends ``hello``, then the envelopes a test sends, and records the acks.
The module-level builders make the payloads Slack sends (events, slash commands) and their signatures.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

JSON = dict[str, Any]

__all__ = [
    "Ack",
    "Call",
    "FakeSlack",
    "FakeSocketMode",
    "Message",
    "app_mention_event",
    "event_callback",
    "message_event",
    "sign_request",
    "slash_command_body",
    "slash_command_payload",
]


# ---------------------------------------------------------------- what Slack sends to an app (builders)


def sign_request(body: bytes | str, signing_secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack signs a request with (``v0`` HMAC-SHA256 over ``v0:<timestamp>:<body>``)."""
    raw = body.encode() if isinstance(body, str) else body
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(signing_secret.encode(), b"v0:" + ts.encode() + b":" + raw, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def event_callback(
    event: JSON,
    *,
    event_id: str,
    team_id: str = "T0001",
    api_app_id: str = "A0001",
    bot_user_id: str = "UBOT",
    event_time: int | None = None,
) -> JSON:
    """The Events API envelope (``type: event_callback``) around ``event``, as Slack posts or sends it."""
    return {
        "token": "fake-verification-token",
        "team_id": team_id,
        "context_team_id": team_id,
        "context_enterprise_id": None,
        "api_app_id": api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-fake-{event_id}",
    }


def _user_event(
    kind: str, text: str, *, user: str, channel: str, ts: str, thread_ts: str | None, team: str
) -> JSON:
    """The fields a ``message`` and an ``app_mention`` event share."""
    event: JSON = {
        "type": kind,
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        "team": team,
        "client_msg_id": str(uuid.uuid4()),
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


def message_event(
    text: str,
    *,
    user: str = "U123",
    channel: str = "D123",
    ts: str,
    thread_ts: str | None = None,
    channel_type: str = "im",
    team: str = "T0001",
    subtype: str | None = None,
) -> JSON:
    """A ``message`` event (a direct message by default: channel ``D…``, ``channel_type: im``)."""
    event = _user_event("message", text, user=user, channel=channel, ts=ts, thread_ts=thread_ts, team=team)
    event["channel_type"] = channel_type
    if subtype is not None:
        event["subtype"] = subtype
    return event


def app_mention_event(
    text: str,
    *,
    user: str = "U123",
    channel: str = "C123",
    ts: str,
    thread_ts: str | None = None,
    team: str = "T0001",
) -> JSON:
    """An ``app_mention`` event (``text`` normally holds ``<@UBOT>``); Slack gives it no ``channel_type``."""
    return _user_event("app_mention", text, user=user, channel=channel, ts=ts, thread_ts=thread_ts, team=team)


def slash_command_payload(
    command: str,
    text: str = "",
    *,
    user_id: str = "U123",
    channel_id: str = "D123",
    team_id: str = "T0001",
    api_app_id: str = "A0001",
    user_name: str = "alice",
    channel_name: str = "directmessage",
    response_url: str = "https://hooks.slack.com/commands/T0001/1/fake",
    trigger_id: str | None = None,
) -> dict[str, str]:
    """The fields of a slash command (all strings, as in Slack's form body and Socket Mode payload)."""
    return {
        "token": "fake-verification-token",
        "team_id": team_id,
        "team_domain": "fake",
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or f"{uuid.uuid4().int % 10**10}.fake",
    }


def slash_command_body(command: str, text: str = "", **fields: Any) -> bytes:
    """The form-encoded body Slack posts for a slash command (keywords as :func:`slash_command_payload`)."""
    return urlencode(slash_command_payload(command, text, **fields)).encode()


# ---------------------------------------------------------------- what the fake records


@dataclass(frozen=True)
class Call:
    """One request to the Web API (``method`` is ``"response_url"`` for posts to a slash command's URL)."""

    method: str
    params: JSON
    headers: dict[str, str]  # names lower-cased
    at: float
    rate_limited: bool = False
    response: JSON = field(default_factory=dict)


@dataclass
class Message:
    """A message in the fake workspace; ``texts`` is its history (posted text first, then each update)."""

    channel: str
    ts: str
    text: str
    user: str
    thread_ts: str | None = None
    bot_id: str | None = None
    blocks: list[Any] | None = None
    texts: list[str] = field(default_factory=list)
    reactions: list[str] = field(default_factory=list)
    streaming: bool = False  # started with chat.startStream and not stopped yet

    def to_api(self) -> JSON:
        out: JSON = {"type": "message", "text": self.text, "user": self.user, "ts": self.ts}
        if self.bot_id is not None:
            out["bot_id"] = self.bot_id
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        if self.blocks is not None:
            out["blocks"] = self.blocks
        return out

    def copy(self) -> Message:
        return replace(self, texts=list(self.texts), reactions=list(self.reactions))


@dataclass(frozen=True)
class Ack:
    """An acknowledgement the Socket Mode client sent back: ``{"envelope_id": ..., "payload": ...}``."""

    envelope_id: str
    payload: JSON | None
    at: float


class _SlackError(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


# ---------------------------------------------------------------- the Web API


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the request threads
    fake: FakeSlack

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        with self._lock:  # a client that connected and sent nothing would hold the join below
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        super().server_close()


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 (the default): one request a connection, so no idle keep-alive connection outlives close().
    timeout = 30

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        fake = cast(_HTTPServer, self.server).fake
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        params: JSON = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            params.update(_parse_body(body, headers.get("content-type", "")))
            body_error = None
        except ValueError:  # bad JSON or not UTF-8
            params["_body"], body_error = body.decode(errors="replace"), "invalid_json"
        extra: dict[str, str] = {}
        if url.path.startswith("/api/"):
            status, extra, answer = fake._api(url.path[len("/api/") :], params, headers, body_error)
            self._reply(status, json.dumps(answer).encode(), "application/json; charset=utf-8", extra)
        elif url.path.startswith("/commands/"):
            fake._record(Call("response_url", params, headers, time.time(), response={"ok": True}))
            self._reply(200, b"ok", "text/plain; charset=utf-8", extra)
        else:
            self._reply(404, b"not found", "text/plain; charset=utf-8", extra)

    def _reply(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _parse_body(body: bytes, content_type: str) -> JSON:
    if not body:
        return {}
    if content_type.startswith("application/json"):
        parsed = json.loads(body)
        return parsed if isinstance(parsed, dict) else {}
    # Form: one value a key (the last, as Slack does); JSON-valued fields (blocks) stay strings here.
    return {key: values[-1] for key, values in parse_qs(body.decode(), keep_blank_values=True).items()}


class FakeSlack:
    """Slack's Web API and Socket Mode on 127.0.0.1; ``with FakeSlack() as slack:`` starts and stops both."""

    APP_TOKEN_METHODS = frozenset({"apps.connections.open"})

    def __init__(
        self,
        bot_token: str = "xoxb-test",
        app_token: str = "xapp-test",
        team_id: str = "T0001",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        app_id: str = "A0001",
        socket_ping_interval: float | None = 0.5,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self._lock = threading.RLock()  # reentrant: a method added to ``methods`` may read the fake
        self._calls: list[Call] = []
        self._store: list[Message] = []
        self._users: dict[str, JSON] = {}
        self._rate_limits: dict[str, list[int]] = {}  # method -> [calls left, Retry-After]
        self._failures: dict[str, list[Any]] = {}  # method -> [calls left, error]
        self._last_ts = 0  # microseconds
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.socket = FakeSocketMode(self, socket_ping_interval)
        # Web API methods: params -> the answer's fields beside ``"ok": true``. A test may add or replace one.
        self.methods: dict[str, Callable[[JSON], JSON]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "reactions.add": self._reactions_add,
            "users.info": self._users_info,
            "bots.info": self._bots_info,
            "conversations.replies": self._conversations_replies,
            "apps.connections.open": self._apps_connections_open,
            "chat.startStream": self._chat_start_stream,
            "chat.appendStream": self._chat_append_stream,
            "chat.stopStream": self._chat_stop_stream,
            "usergroups.users.list": self._usergroups_users_list,
        }
        self._groups: dict[str, list[str]] = {}

    # -------------------------------------------------------------- lifecycle

    def start(self) -> FakeSlack:
        if self._httpd is not None:
            return self
        httpd = _HTTPServer()
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-slack-http", daemon=True
        )
        self._thread.start()
        self.socket._start()
        return self

    def close(self) -> None:
        """Close Socket Mode connections (code 1001), then the Web API; idempotent."""
        self.socket._close()
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/``"""
        if self._httpd is None:
            raise RuntimeError("FakeSlack is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    @property
    def api_url(self) -> str:
        """What ``WebClient(base_url=...)`` takes: ``http://127.0.0.1:PORT/api/`` (the slash matters)."""
        return self.url + "api/"

    def response_url(self, name: str = "1") -> str:
        """A slash command's ``response_url`` served here (posts to it are recorded as ``response_url``)."""
        return f"{self.url}commands/{self.team_id}/{name}/fake"

    # -------------------------------------------------------------- what tests set up and read

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """The next ``times`` calls to ``method`` answer HTTP 429, ``Retry-After``, ``error: ratelimited``."""
        with self._lock:
            self._rate_limits[method] = [times, retry_after]

    def fail(self, method: str, error: str, times: int = 1) -> None:
        """The next ``times`` calls to ``method`` answer ``{"ok": false, "error": error}`` (HTTP 200)."""
        with self._lock:
            self._failures[method] = [times, error]

    def add_user(self, user_id: str, name: str, real_name: str = "", *, tz: str = "UTC") -> None:
        """What ``users.info`` answers for ``user_id`` (any other id gets a made-up user)."""
        with self._lock:
            self._users[user_id] = self._user(user_id, name, real_name or name, tz)

    def add_group(self, group_id: str, users: list[str]) -> None:
        """A user group (``S…``) and its members, for ``usergroups.users.list``."""
        with self._lock:
            self._groups[group_id] = list(users)

    def without_streaming(self) -> None:
        """A workspace without native streaming: the ``chat.*Stream`` methods answer ``unknown_method``."""
        with self._lock:
            for method in ("chat.startStream", "chat.appendStream", "chat.stopStream"):
                self.methods.pop(method, None)

    def action_payload(
        self, channel: str, ts: str, action_id: str, *, user: str = "U123", button: str = "positive_button"
    ) -> JSON:
        """The ``block_actions`` payload Slack sends when ``user`` clicks the element ``action_id`` of the
        message ``ts`` (a button, or ``button`` of a ``feedback_buttons`` element), its value as posted."""
        with self._lock:
            message = self._find(channel, ts)
            if message is None:
                raise KeyError(f"no message {ts} in {channel}")
            found = [
                (block, element)
                for block in message.blocks or []
                for element in block.get("elements") or []
                if isinstance(element, dict) and element.get("action_id") == action_id
            ]
            if not found:
                raise KeyError(f"message {ts} has no element {action_id!r}: blocks {message.blocks!r}")
            block, element = found[0]
            api_message, action_ts = message.to_api(), self._new_ts()
        kind = element["type"]
        value = element[button]["value"] if kind == "feedback_buttons" else element.get("value")
        action = {
            "type": kind,
            "action_id": action_id,
            "block_id": block.get("block_id") or "fake-block",
            "value": value,
            "action_ts": action_ts,
        }
        if kind == "button":
            action["text"] = element.get("text")
        container: JSON = {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False}
        if message.thread_ts is not None:
            container["thread_ts"] = message.thread_ts
        return {
            "type": "block_actions",
            "user": {
                "id": user,
                "username": f"user-{user.lower()}",
                "name": f"user-{user.lower()}",
                "team_id": self.team_id,
            },
            "api_app_id": self.app_id,
            "token": "fake-verification-token",
            "container": container,
            "trigger_id": f"{uuid.uuid4().int % 10**10}.fake",
            "team": {"id": self.team_id, "domain": "fake"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": "fake-channel"},
            "message": api_message,
            "state": {"values": {}},
            "response_url": self.response_url("actions"),
            "actions": [action],
        }

    def add_message(
        self, channel: str, text: str, *, ts: str, user: str = "U123", thread_ts: str | None = None
    ) -> None:
        """Put a (user's) message into the workspace, for ``conversations.replies`` and ``reactions.add``."""
        with self._lock:
            if self._find(channel, ts) is None:
                self._store.append(Message(channel, ts, text, user, thread_ts, texts=[text]))

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    @property
    def messages(self) -> list[Message]:
        """Copies of the messages posted through ``chat.postMessage``, in order, with their current text."""
        with self._lock:
            return [m.copy() for m in self._store if m.bot_id is not None]

    def message(self, channel: str, ts: str) -> Message:
        with self._lock:
            found = self._find(channel, ts)
            if found is None:
                raise KeyError(f"no message {ts} in {channel}")
            return found.copy()

    def wait_for(self, predicate: Callable[[FakeSlack], object], timeout: float = 10.0) -> None:
        """Poll until ``predicate(self)`` is true; on timeout raise AssertionError describing the state."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {_describe(predicate)}\n{self.describe()}"
                )
            time.sleep(0.01)

    def describe(self) -> str:
        """The recorded calls, messages and acks, for failure messages."""
        lines = ["calls:"]
        lines += [f"  {c.method} {_short(c.params)} -> {_short(c.response)}" for c in self.calls] or [
            "  (none)"
        ]
        lines.append("messages:")
        lines += [f"  {m.channel} {m.ts} thread={m.thread_ts} texts={m.texts!r}" for m in self.messages] or [
            "  (none)"
        ]
        lines.append(f"socket: {self.socket.connections} connection(s), acks={self.socket.acks!r}")
        return "\n".join(lines)

    # -------------------------------------------------------------- the protocol

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def _api(
        self, method: str, params: JSON, headers: dict[str, str], body_error: str | None = None
    ) -> tuple[int, dict[str, str], JSON]:
        at = time.time()
        with self._lock:
            status, extra, answer = self._answer(method, params, headers, body_error)
            self._calls.append(Call(method, params, headers, at, status == 429, answer))
        return status, extra, answer

    def _answer(
        self, method: str, params: JSON, headers: dict[str, str], body_error: str | None
    ) -> tuple[int, dict[str, str], JSON]:
        if method not in self.methods:
            return 200, {}, {"ok": False, "error": "unknown_method"}
        if body_error is not None:
            return 200, {}, {"ok": False, "error": body_error}
        limit = self._rate_limits.get(method)
        if limit is not None and limit[0] > 0:
            limit[0] -= 1
            return 429, {"Retry-After": str(limit[1])}, {"ok": False, "error": "ratelimited"}
        bearer = headers.get("authorization", "")
        token = bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else str(params.get("token", ""))
        wanted, other = (
            (self.app_token, self.bot_token)
            if method in self.APP_TOKEN_METHODS
            else (self.bot_token, self.app_token)
        )
        if token != wanted:
            error = "not_allowed_token_type" if token == other else "invalid_auth"
            return 200, {}, {"ok": False, "error": error}
        failure = self._failures.get(method)
        if failure is not None and failure[0] > 0:
            failure[0] -= 1
            return 200, {}, {"ok": False, "error": failure[1]}
        try:
            return 200, {}, {"ok": True, **self.methods[method](params)}
        except _SlackError as e:
            return 200, {}, {"ok": False, "error": e.error}

    def _new_ts(self) -> str:
        """Slack's message id: the posting time, ``"1700000000.000100"``, here strictly increasing."""
        micros = self._last_ts = max(time.time_ns() // 1000, self._last_ts + 100)
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _find(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self._store if m.channel == channel and m.ts == ts), None)

    def _user(self, user_id: str, name: str, real_name: str, tz: str = "UTC") -> JSON:
        return {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "deleted": False,
            "real_name": real_name,
            "tz": tz,
            "is_bot": user_id == self.bot_user_id,
            "is_app_user": False,
            "profile": {"real_name": real_name, "display_name": name, "team": self.team_id},
        }

    # -------------------------------------------------------------- methods (called under self._lock)

    def _auth_test(self, params: JSON) -> JSON:
        return {
            "url": "https://fake.slack.com/",
            "team": "Fake",
            "user": "chatbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, params: JSON) -> JSON:
        channel = str(params.get("channel") or "")
        if not channel:
            raise _SlackError("channel_not_found")
        text = str(params.get("text") or "")
        blocks = _blocks(params.get("blocks"))
        if not text and not blocks and not params.get("attachments"):
            raise _SlackError("no_text")
        thread_ts = str(params["thread_ts"]) if params.get("thread_ts") else None
        message = Message(
            channel, self._new_ts(), text, self.bot_user_id, thread_ts, self.bot_id, blocks, [text]
        )
        self._store.append(message)
        return {"channel": channel, "ts": message.ts, "message": {**message.to_api(), "app_id": self.app_id}}

    def _chat_update(self, params: JSON) -> JSON:
        message = self._find(str(params.get("channel") or ""), str(params.get("ts") or ""))
        if message is None:
            raise _SlackError("message_not_found")
        if "text" in params:
            message.text = str(params["text"] or "")
        if "blocks" in params:
            message.blocks = _blocks(params["blocks"])
        message.texts.append(message.text)
        return {
            "channel": message.channel,
            "ts": message.ts,
            "text": message.text,
            "message": message.to_api(),
        }

    def _chat_post_ephemeral(self, params: JSON) -> JSON:
        if not params.get("channel"):
            raise _SlackError("channel_not_found")
        if not params.get("user"):
            raise _SlackError("user_not_found")
        return {"message_ts": self._new_ts()}

    def _reactions_add(self, params: JSON) -> JSON:
        if not params.get("name"):
            raise _SlackError("invalid_name")
        message = self._find(str(params.get("channel") or ""), str(params.get("timestamp") or ""))
        if message is not None:
            message.reactions.append(str(params["name"]))
        return {}

    def _users_info(self, params: JSON) -> JSON:
        user_id = str(params.get("user") or "")
        if not user_id:
            raise _SlackError("user_not_found")
        name = "chatbot" if user_id == self.bot_user_id else f"user-{user_id.lower()}"
        return {"user": self._users.get(user_id) or self._user(user_id, name, name.title())}

    def _bots_info(self, params: JSON) -> JSON:
        bot_id = str(params.get("bot") or self.bot_id)
        return {
            "bot": {
                "id": bot_id,
                "deleted": False,
                "name": "chatbot",
                "updated": 1_700_000_000,
                "app_id": self.app_id,
                "user_id": self.bot_user_id if bot_id == self.bot_id else f"U{bot_id}",
                "icons": {"image_36": "https://fake.slack.com/bot_36.png"},
            }
        }

    def _conversations_replies(self, params: JSON) -> JSON:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        thread = [m for m in self._store if m.channel == channel and ts in (m.ts, m.thread_ts)]
        if not thread:
            raise _SlackError("thread_not_found")
        thread.sort(key=lambda m: float(m.ts))
        return {
            "messages": [m.to_api() for m in thread],
            "has_more": False,
            "response_metadata": {"next_cursor": ""},
        }

    def _streamed_text(self, params: JSON) -> str:
        """The text of a stream call: ``markdown_text`` and the ``markdown_text`` chunks (JSON or form)."""
        chunks = params.get("chunks")
        if isinstance(chunks, str):
            chunks = json.loads(chunks) if chunks else None
        if params.get("markdown_text") and chunks:
            raise _SlackError("invalid_arguments")  # one or the other, as Slack says
        text = str(params.get("markdown_text") or "")
        for chunk in chunks or []:
            if not isinstance(chunk, dict) or chunk.get("type") not in (
                "markdown_text",
                "task_update",
                "plan_update",
            ):
                raise _SlackError("invalid_chunks")
            text += str(chunk.get("text") or "") if chunk["type"] == "markdown_text" else ""
        return text

    def _streaming_message(self, params: JSON) -> Message:
        message = self._find(str(params.get("channel") or ""), str(params.get("ts") or ""))
        if message is None:
            raise _SlackError("message_not_found")
        if not message.streaming:
            raise _SlackError("message_not_in_streaming_state")
        return message

    def _chat_start_stream(self, params: JSON) -> JSON:
        channel = str(params.get("channel") or "")
        if not channel:
            raise _SlackError("channel_not_found")
        thread_ts = str(params.get("thread_ts") or "")
        if not thread_ts:
            raise _SlackError("invalid_arguments")
        if not channel.startswith("D") and not (
            params.get("recipient_user_id") and params.get("recipient_team_id")
        ):
            raise _SlackError("missing_recipient_user_id")  # required outside a direct message
        text = self._streamed_text(params)
        message = Message(
            channel, self._new_ts(), text, self.bot_user_id, thread_ts, self.bot_id, None, [text]
        )
        message.streaming = True
        self._store.append(message)
        return {"channel": channel, "ts": message.ts}

    def _chat_append_stream(self, params: JSON) -> JSON:
        message = self._streaming_message(params)
        text = self._streamed_text(params)
        if not text:
            raise _SlackError("no_text")
        message.text += text
        message.texts.append(message.text)
        return {"channel": message.channel, "ts": message.ts}

    def _chat_stop_stream(self, params: JSON) -> JSON:
        message = self._streaming_message(params)
        text = self._streamed_text(params)
        if text:
            message.text += text
            message.texts.append(message.text)
        if params.get("blocks"):
            message.blocks = _blocks(params["blocks"])
        message.streaming = False
        return {"channel": message.channel, "ts": message.ts, "message": message.to_api()}

    def _usergroups_users_list(self, params: JSON) -> JSON:
        group = str(params.get("usergroup") or "")
        if group not in self._groups:
            raise _SlackError("no_such_subteam")
        return {"users": list(self._groups[group])}

    def _apps_connections_open(self, params: JSON) -> JSON:
        return {"url": self.socket._issue_url()}


def _blocks(value: object) -> list[Any] | None:
    if isinstance(value, str):  # form-encoded requests carry blocks as a JSON string
        value = json.loads(value) if value else None
    return list(value) if isinstance(value, list) else None


def _short(value: object, limit: int = 160) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(predicate: Callable[..., object]) -> str:
    code = getattr(predicate, "__code__", None)
    where = f" ({code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno})" if code is not None else ""
    return f"{getattr(predicate, '__qualname__', repr(predicate))}{where}"


# ---------------------------------------------------------------- Socket Mode


class FakeSocketMode:
    """Slack's Socket Mode server: ``apps.connections.open`` hands out its URL (one ticket a connection)."""

    def __init__(self, fake: FakeSlack, ping_interval: float | None = 0.5) -> None:
        self._fake = fake
        self._ping_interval = ping_interval
        self._cond = threading.Condition()
        self._open: list[ServerConnection] = []  # connections that got their hello, oldest first
        self._tickets: set[str] = set()
        self._acks: list[Ack] = []
        self._received: list[JSON] = []
        self._sent: list[JSON] = []
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check_ticket,
            compression=None,  # Slack's builtin client negotiates no extension anyway
            close_timeout=1,  # the builtin client drops the socket without answering a close frame
            # Slack pings its clients too. Often here: a ping ends the builtin client's blocking recv (3 s
            # timeout) that its close() waits for, so SocketModeHandler.close() takes ~1 s, not ~3 s.
            ping_interval=self._ping_interval,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-slack-ws", daemon=True)
        self._thread.start()

    def _close(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()  # stops accepting, closes each connection with 1001, joins the handlers
        if thread is not None:
            thread.join()

    def _issue_url(self) -> str:
        if self._server is None:
            raise _SlackError("internal_error")
        ticket = str(uuid.uuid4())
        with self._cond:
            self._tickets.add(ticket)
        port = self._server.socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}/link/?ticket={ticket}&app_id={self._fake.app_id}"

    def _check_ticket(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        ticket = dict(parse_qsl(url.query)).get("ticket", "")
        with self._cond:
            if url.path.rstrip("/") == "/link" and ticket in self._tickets:
                self._tickets.discard(ticket)
                return None
        return connection.respond(HTTPStatus.UNAUTHORIZED, "unknown or used ticket\n")

    def _handle(self, connection: ServerConnection) -> None:
        try:
            with self._cond:
                hello = {
                    "type": "hello",
                    "num_connections": len(self._open) + 1,
                    "debug_info": {
                        "host": "applink-fake",
                        "build_number": 1,
                        "approximate_connection_time": 3600,
                    },
                    "connection_info": {"app_id": self._fake.app_id},
                }
            connection.send(json.dumps(hello))
            with self._cond:
                self._open.append(connection)
                self._cond.notify_all()
            for raw in connection:
                self._receive(raw)
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                if connection in self._open:
                    self._open.remove(connection)
                self._cond.notify_all()

    def _receive(self, raw: str | bytes) -> None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            message = json.loads(text)
        except ValueError:
            message = {"raw": text}
        if not isinstance(message, dict):
            message = {"raw": text}
        with self._cond:
            self._received.append(message)
            if "envelope_id" in message:
                payload = message.get("payload")
                self._acks.append(Ack(str(message["envelope_id"]), payload, time.time()))
            self._cond.notify_all()

    # -------------------------------------------------------------- what tests use

    @property
    def connections(self) -> int:
        """Open connections that got their ``hello``."""
        with self._cond:
            return len(self._open)

    @property
    def acks(self) -> list[Ack]:
        with self._cond:
            return list(self._acks)

    @property
    def received(self) -> list[JSON]:
        """Every message the clients sent (acks included), parsed."""
        with self._cond:
            return list(self._received)

    @property
    def sent(self) -> list[JSON]:
        """Every envelope sent to the clients (``hello`` excluded)."""
        with self._cond:
            return list(self._sent)

    def wait_connected(self, timeout: float = 10.0, count: int = 1) -> None:
        with self._cond:
            if self._cond.wait_for(lambda: len(self._open) >= count, timeout):
                return
        opened = len(self._fake.calls_to("apps.connections.open"))  # (the fake's lock, so outside _cond)
        raise AssertionError(
            f"{count} Socket Mode connection(s) not open within {timeout}s "
            f"(apps.connections.open calls: {opened})"
        )

    def wait_for_ack(self, envelope_id: str, timeout: float = 10.0) -> Ack:
        def find() -> Ack | None:
            return next((ack for ack in self._acks if ack.envelope_id == envelope_id), None)

        with self._cond:
            if self._cond.wait_for(lambda: find() is not None, timeout):
                return cast(Ack, find())
            acked = [ack.envelope_id for ack in self._acks]
        raise AssertionError(f"envelope {envelope_id} not acknowledged within {timeout}s; acked: {acked}")

    def send(self, envelope: JSON) -> None:
        """Send a raw message to the newest connection (waits up to 10 s for one)."""
        self.wait_connected()
        with self._cond:
            connection = self._open[-1]
            self._sent.append(envelope)
        connection.send(json.dumps(envelope))

    def send_envelope(
        self, type_: str, payload: JSON, *, accepts_response_payload: bool = False, **extra: Any
    ) -> str:
        envelope_id = str(uuid.uuid4())
        self.send(
            {
                "envelope_id": envelope_id,
                "payload": payload,
                "type": type_,
                "accepts_response_payload": accepts_response_payload,
                **extra,
            }
        )
        return envelope_id

    def send_event(
        self, event: JSON, *, event_id: str, retry_attempt: int = 0, retry_reason: str = ""
    ) -> str:
        """Send an ``events_api`` envelope; returns its envelope id. A user's message/app_mention is also
        put into the workspace (so ``conversations.replies`` and ``reactions.add`` see it)."""
        fake = self._fake
        by_a_user = (
            event.get("type") in ("message", "app_mention") and not {"subtype", "bot_id"} & event.keys()
        )
        if by_a_user and event.get("channel") and event.get("ts"):
            fake.add_message(
                event["channel"],
                str(event.get("text", "")),
                ts=event["ts"],
                user=str(event.get("user", "")),
                thread_ts=event.get("thread_ts"),
            )
        payload = event_callback(
            event,
            event_id=event_id,
            team_id=fake.team_id,
            api_app_id=fake.app_id,
            bot_user_id=fake.bot_user_id,
        )
        return self.send_envelope(
            "events_api", payload, retry_attempt=retry_attempt, retry_reason=retry_reason
        )

    def send_slash_command(self, command: str, text: str = "", **fields: Any) -> str:
        """Send a ``slash_commands`` envelope (keywords as :func:`slash_command_payload`; ``response_url``
        defaults to one served by the fake); returns its envelope id."""
        fields.setdefault("response_url", self._fake.response_url(str(len(self.sent) + 1)))
        fields.setdefault("team_id", self._fake.team_id)
        fields.setdefault("api_app_id", self._fake.app_id)
        payload = slash_command_payload(command, text, **fields)
        return self.send_envelope("slash_commands", payload, accepts_response_payload=True)

    def send_interactive(self, payload: JSON) -> str:
        """Send an ``interactive`` envelope (``block_actions``: see :meth:`FakeSlack.action_payload`)."""
        return self.send_envelope("interactive", payload)

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's warning before it drops a connection; the client opens a new one then closes this one."""
        self.send({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}})
