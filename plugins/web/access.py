"""Who is at the other end of the web chat: a browser-session cookie and optional basic auth.

Both are plain ASGI middleware around the Gradio app, so they hold for every route Gradio serves
(the page, its assets, the queue and the API) and nothing in the page has to remember them.

* The session cookie (``chatbot_session``) is a random token set on the first page load,
  ``HttpOnly`` so the page's scripts never see it. The conversation id kept in the store is a
  hash of it: reading the store (or a feedback export) never hands out a key to a live chat.
* Basic auth is on when ``CHATBOT_WEB_AUTH`` holds ``user:password``. The credentials are
  compared in constant time and never printed, logged or put in an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any

from chatbot import ChannelError

COOKIE = "chatbot_session"
COOKIE_MAX_AGE = 30 * 24 * 3600  # a month: a customer coming back next week finds the conversation
AUTH_VARIABLE = "CHATBOT_WEB_AUTH"
REALM = "chatbot"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def conversation_id(token: str) -> str:
    """The store's id for the conversation of a browser session (or of an API client's session)."""
    return "web-" + hashlib.sha256(token.encode()).hexdigest()[:32]


def session_token(cookie_header: str | None) -> str | None:
    """The session token in a ``Cookie`` header, if it holds a well-formed one."""
    if not cookie_header:
        return None
    try:
        jar = SimpleCookie(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    if morsel is None or not 16 <= len(morsel.value) <= 128:
        return None
    return morsel.value


@dataclass(frozen=True)
class Credentials:
    """One user name and password for basic auth; shown as ``Credentials(user=...)`` only."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r})"

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Credentials | None:
        """Read ``CHATBOT_WEB_AUTH`` (``user:password``); ``None`` when it is unset or empty."""
        value = (os.environ if environ is None else environ).get(AUTH_VARIABLE, "")
        if not value:
            return None
        user, colon, password = value.partition(":")
        if not colon or not user or not password:
            raise ChannelError(
                f"{AUTH_VARIABLE} is set but is not of the form user:password",
                hint="set it to a user name and a password separated by a colon, or unset it",
            )
        return cls(user, password)

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries these credentials (constant-time)."""
        given = basic_credentials(authorization)
        if given is None:
            return False
        expected = f"{self.user}:{self.password}".encode()
        return hmac.compare_digest(f"{given[0]}:{given[1]}".encode(), expected)


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """The (user, password) of an ``Authorization: Basic`` header, if it holds well-formed ones."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return (user, password) if colon else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _needs_cookie(scope: Scope) -> bool:
    """A page load without a session: the browser gets its cookie with the page.

    Only GET requests get one. An API client that keeps no cookies (``gradio_client``) then has
    the conversation of its Gradio session instead of a new one at every call.
    """
    if scope["type"] != "http" or scope.get("method") != "GET":
        return False
    return session_token(_header(scope, b"cookie")) is None


class AccessMiddleware:
    """Checks basic auth (when configured) and gives each browser a session cookie."""

    def __init__(self, app: ASGIApp, *, credentials: Credentials | None, secure_cookie: bool = False) -> None:
        self.app = app
        self.credentials = credentials
        self.secure_cookie = secure_cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.credentials is not None and not self.credentials.accepts(_header(scope, b"authorization")):
            await self._refuse(scope, send)
            return
        if not _needs_cookie(scope):
            await self.app(scope, receive, send)
            return
        token = secrets.token_urlsafe(32)
        cookie = f"{COOKIE}={token}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax"
        if self.secure_cookie or scope.get("scheme") == "https":
            cookie += "; Secure"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"This chat needs a user name and password.\n"
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
