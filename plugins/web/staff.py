"""The staff console, served beside the web chat at ``/staff``: the support team's side of a
person in the loop.

* **Queue** (``/staff/``): conversations waiting for a person or held by one, oldest first, live.
* **Conversation** (``/staff/conversations/ID``): the whole history, which model version answered,
  who holds it; take it over, answer (the customer's open page shows the answer within
  seconds, marked as a person's), hand it back to the bot or close it. The customer's messages
  appear as they arrive.
* **Review** (``/staff/review``): replies rated thumbs down and conversations handed over, by date
  and model version; write the reply the bot should have given (a correction, stored beside the
  original with who wrote it and when; ``chatbot feedback export`` trains on it).

Every route but the sign-in form refuses a request without staff credentials (a session from
``/staff/login``, or HTTP basic auth for scripts; see :mod:`plugins.web.staff_access`): pages send
the browser to the sign-in form, everything else answers 401. Each page has a JSON twin under
``/staff/api/``. All of it goes through the engine's public API, so it works on any replica over
a shared store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from chatbot import (
    ChatbotError,
    Correction,
    Engine,
    Handover,
    HandoverError,
    InvalidMessage,
    Message,
    Review,
    UnknownConversation,
    UnknownMessage,
    customer_message,
)
from plugins.web.staff_access import SESSION_S, STAFF_COOKIE, SignInLimit, StaffAccounts
from plugins.web.staff_pages import render

PREFIX = "/staff"
REVIEW_DAYS = 30  # what the review shows when no start date is given
REVIEW_READ, REVIEW_SHOWN = 1000, 200  # items read for a review (all versions), and shown (one's)
Endpoint = Callable[[Request], Awaitable[Response]]
_STATUS = {HandoverError: 409, InvalidMessage: 422, UnknownConversation: 404, UnknownMessage: 404}


class StaffConsole:
    """The console's routes over one engine, for the staff members in ``accounts``.

    ``root_path`` is the URL prefix the web chat is served under (``--root-path``), so links and
    the session cookie's path are right behind a proxy."""

    def __init__(self, engine: Engine, accounts: StaffAccounts, *, root_path: str = "") -> None:
        self.engine = engine
        self.accounts = accounts
        self.base = root_path.rstrip("/") + PREFIX
        self.limit = SignInLimit()

    def app(self) -> Starlette:
        staff = self._staff_only
        routes = [
            Route(PREFIX + "/login", self.login_form, methods=["GET"]),
            Route(PREFIX + "/login", self.login, methods=["POST"]),
            Route(PREFIX + "/logout", staff(self.logout), methods=["POST"]),
            Route(PREFIX, staff(self.queue_page), methods=["GET"]),
            Route(PREFIX + "/", staff(self.queue_page), methods=["GET"]),
            Route(PREFIX + "/api/queue", staff(self.queue_json), methods=["GET"]),
            Route(PREFIX + "/conversations/{cid}", staff(self.conversation_page), methods=["GET"]),
            Route(PREFIX + "/api/conversations/{cid}", staff(self.conversation_json), methods=["GET"]),
            Route(PREFIX + "/conversations/{cid}/take", staff(self.take), methods=["POST"]),
            Route(PREFIX + "/conversations/{cid}/reply", staff(self.reply), methods=["POST"]),
            Route(PREFIX + "/conversations/{cid}/hand-back", staff(self.hand_back), methods=["POST"]),
            Route(PREFIX + "/review", staff(self.review_page), methods=["GET"]),
            Route(PREFIX + "/api/review", staff(self.review_json), methods=["GET"]),
            Route(PREFIX + "/replies/{message_id:int}/correction", staff(self.correct), methods=["POST"]),
        ]
        return Starlette(routes=routes)

    # -- access ----------------------------------------------------------------------------

    def who(self, request: Request) -> str | None:
        """The signed-in staff member: a valid session cookie, else basic auth; never a customer."""
        return self.accounts.signed_in(request.cookies.get(STAFF_COOKIE)) or self.accounts.basic(
            request.headers.get("authorization")
        )

    def _staff_only(self, endpoint: Callable[[Request, str], Awaitable[Response]]) -> Endpoint:
        async def guarded(request: Request) -> Response:
            staff = self.who(request)
            if staff is None:
                if request.method == "GET" and "/api/" not in request.url.path:
                    target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
                    return RedirectResponse(f"{self.base}/login?next={target}", status_code=303)
                return PlainTextResponse(
                    "Staff only: sign in at /staff/login, or send a staff name and password (basic auth).\n",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="chatbot staff", charset="UTF-8"'},
                )
            if request.method == "POST" and not _same_origin(request):
                return PlainTextResponse("Refused: a form from another site.\n", status_code=403)
            return await endpoint(request, staff)

        return guarded

    async def login_form(self, request: Request) -> Response:
        return HTMLResponse(
            self._page("login", None, title="Sign in", next=_next(request, self.base), name="")
        )

    async def login(self, request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        target = _next_of(str(form.get("next", "")), self.base)
        address = request.client.host if request.client else ""
        if not self.limit.allowed(address):
            error, status = "Too many failed sign-ins from your address: wait a minute and try again.", 429
        elif self.accounts.check(name, password):
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                STAFF_COOKIE,
                self.accounts.session(name),
                max_age=SESSION_S,
                path=self.base,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return response
        else:
            self.limit.failed(address)
            error, status = "That name and password do not match a staff account.", 401
        page = self._page("login", None, title="Sign in", next=target, name=name, error=error)
        return HTMLResponse(page, status_code=status)

    async def logout(self, request: Request, staff: str) -> Response:
        response = RedirectResponse(f"{self.base}/login", status_code=303)
        response.delete_cookie(STAFF_COOKIE, path=self.base)
        return response

    # -- the queue ---------------------------------------------------------------------------

    async def queue_page(self, request: Request, staff: str) -> Response:
        queue = await self._call(self._queue)
        return HTMLResponse(self._page("queue", staff, title="Queue", queue=queue))

    async def queue_json(self, request: Request, staff: str) -> Response:
        return JSONResponse({"queue": await self._call(self._queue)})

    def _queue(self) -> list[dict[str, Any]]:
        items = []
        for handover in self.engine.queue():
            try:
                conversation = self.engine.get(handover.conversation_id)
            except UnknownConversation:
                continue
            last = conversation.messages[-1].content if conversation.messages else ""
            items.append(
                {
                    **_handover_json(handover),
                    "url": self._url(handover.conversation_id),
                    "channel": conversation.metadata.get("channel", ""),
                    "model": _model(conversation.messages),
                    "last": last if len(last) <= 140 else last[:139] + "…",
                }
            )
        return items

    # -- one conversation --------------------------------------------------------------------

    async def conversation_page(self, request: Request, staff: str, **extra: Any) -> Response:
        cid = request.path_params["cid"]
        try:
            shown = await self._call(self._conversation, cid)
        except ChatbotError as error:
            return self._error(error, staff)
        handover = shown["handover"]
        holding = handover is not None and handover["state"] == "taken" and handover["staff"] == staff
        page = self._page(
            "conversation",
            staff,
            title="Conversation",
            conversation=shown,
            handover_text=shown["handover_text"],
            can_take=handover is not None and handover["state"] in ("waiting", "taken") and not holding,
            holding=holding,
            url=self._url(cid),
            quoted=quote(cid, safe=""),
            back=self._url(cid),
            draft=extra.get("draft", ""),
            error=extra.get("error"),
        )
        return HTMLResponse(page, status_code=extra.get("status", 200))

    async def conversation_json(self, request: Request, staff: str) -> Response:
        try:
            return JSONResponse(await self._call(self._conversation, request.path_params["cid"]))
        except ChatbotError as error:
            return JSONResponse({"error": str(error)}, status_code=_status(error))

    def _conversation(self, cid: str) -> dict[str, Any]:
        conversation = self.engine.get(cid)
        handover = self.engine.handover(cid)
        ratings = self.engine.ratings(cid)
        corrections = self.engine.corrections(cid)
        messages = [_message_json(m, ratings, corrections) for m in conversation.messages]
        return {
            "id": conversation.id,
            "channel": conversation.metadata.get("channel", "") or "—",
            "model": _model(conversation.messages),
            "handover": _handover_json(handover) if handover else None,
            "handover_text": _handover_text(handover),
            "messages": messages,
        }

    async def take(self, request: Request, staff: str) -> Response:
        cid = request.path_params["cid"]
        return await self._act(request, staff, lambda: self.engine.take(cid, staff))

    async def reply(self, request: Request, staff: str) -> Response:
        cid = request.path_params["cid"]
        text = str((await request.form()).get("text", ""))
        return await self._act(request, staff, lambda: self.engine.person_reply(cid, staff, text), draft=text)

    async def hand_back(self, request: Request, staff: str) -> Response:
        cid = request.path_params["cid"]
        close = str((await request.form()).get("close", "")) == "1"
        return await self._act(request, staff, lambda: self.engine.hand_back(cid, staff, close=close))

    async def _act(
        self, request: Request, staff: str, action: Callable[[], object], draft: str = ""
    ) -> Response:
        """Run a staff action; back to the conversation, or its page with the reason (and what
        was typed, so nothing is lost); a script asking for JSON gets JSON."""
        wants_json = "application/json" in request.headers.get("accept", "")
        try:
            done = await self._call(action)
        except ChatbotError as error:
            if wants_json:
                return JSONResponse({"error": str(error)}, status_code=_status(error))
            return await self.conversation_page(
                request, staff, error=str(error), draft=draft, status=_status(error)
            )
        if wants_json:
            return JSONResponse(_record_json(done))
        return RedirectResponse(self._url(request.path_params["cid"]), status_code=303)

    # -- review ------------------------------------------------------------------------------

    async def review_page(self, request: Request, staff: str) -> Response:
        try:
            since, until, model = _filters(request)
            found = await self._call(self._reviewed, since, until)
            items = await self._call(self._review_items, found, model)
        except ChatbotError as error:
            return self._error(error, staff)
        query = request.query_params
        page = self._page(
            "review",
            staff,
            title="Review",
            items=items,
            models=sorted({item.model for item in found if item.model}),  # the versions in this range
            since=_since(request),
            until=query.get("until", ""),
            model=model or "",
            back=f"{self.base}/review" + (f"?{request.url.query}" if request.url.query else ""),
        )
        return HTMLResponse(page)

    async def review_json(self, request: Request, staff: str) -> Response:
        try:
            since, until, model = _filters(request)
            found = await self._call(self._reviewed, since, until)
            return JSONResponse({"review": await self._call(self._review_items, found, model)})
        except ChatbotError as error:
            return JSONResponse({"error": str(error)}, status_code=_status(error))

    def _reviewed(self, since: datetime | None, until: datetime | None) -> tuple[Review, ...]:
        """Every model version's items in the range, read once: the page lists the versions too."""
        return self.engine.review(since=since, until=until, limit=REVIEW_READ)

    def _review_items(self, found: tuple[Review, ...], model: str | None) -> list[dict[str, Any]]:
        chosen = [item for item in found if model is None or item.model == model]
        return [self._review_json(item) for item in chosen[:REVIEW_SHOWN]]

    def _review_json(self, item: Review) -> dict[str, Any]:
        reply, asked = None, ""
        if item.reply is not None:
            corrections = {item.reply.id: item.correction} if item.correction else {}
            reply = _message_json(item.reply, self.engine.ratings(item.conversation_id), corrections)
            history = self.engine.get(item.conversation_id).messages  # what the customer wrote before it
            earlier = [m for m in history if m.seq < item.reply.seq and m.role == "user"]
            asked = earlier[-1].content if earlier else ""
        return {
            "why": item.why,
            "conversation_id": item.conversation_id,
            "url": self._url(item.conversation_id),
            "at": item.at.isoformat(),
            "model": item.model,
            "asked": asked,
            "reply": reply,
            "handover": _handover_json(item.handover) if item.handover else None,
        }

    async def correct(self, request: Request, staff: str) -> Response:
        message_id = request.path_params["message_id"]
        form = await request.form()
        text, back = str(form.get("text", "")), _next_of(str(form.get("back", "")), self.base)
        wants_json = "application/json" in request.headers.get("accept", "")
        try:
            correction = await self._call(self.engine.correct, message_id, staff, text)
        except ChatbotError as error:
            if wants_json:
                return JSONResponse({"error": str(error)}, status_code=_status(error))
            return self._error(error, staff, back=back)
        if wants_json:
            return JSONResponse(_record_json(correction))
        return RedirectResponse(back, status_code=303)

    # -- helpers -----------------------------------------------------------------------------

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)  # the store may take a while to answer

    def _url(self, cid: str) -> str:
        return f"{self.base}/conversations/{quote(cid, safe='')}"

    def _page(self, template: str, staff: str | None, **values: Any) -> str:
        return render(template, base=self.base, staff=staff, **values)

    def _error(self, error: ChatbotError, staff: str, *, back: str | None = None) -> Response:
        message = customer_message(error)  # a store that fails names its database: not on a page
        page = self._page("error", staff, title="Error", error=message, back=back or f"{self.base}/")
        return HTMLResponse(page, status_code=_status(error))


def _status(error: ChatbotError) -> int:
    return next((code for kind, code in _STATUS.items() if isinstance(error, kind)), 503)


def _same_origin(request: Request) -> bool:
    """A form posted from this site (the browser says where a POST came from); scripts send none."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")


def _next(request: Request, base: str) -> str:
    return _next_of(request.query_params.get("next", ""), base)


def _next_of(target: str, base: str) -> str:
    """Where to go after signing in or acting: a path of this console only (never another site)."""
    return target if target.startswith(base) and "//" not in target and "\\" not in target else base + "/"


def _filters(request: Request) -> tuple[datetime | None, datetime | None, str | None]:
    """``since`` and ``until`` (dates, ``until`` inclusive) and ``model`` from the query; without
    ``since``, the last :data:`REVIEW_DAYS` days (a page never reads the whole history)."""
    query = request.query_params
    since, until = _day(_since(request), "since"), _day(query.get("until", ""), "until")
    return since, until + timedelta(days=1) if until else None, query.get("model") or None


def _since(request: Request) -> str:
    default = (datetime.now(UTC) - timedelta(days=REVIEW_DAYS)).date().isoformat()
    return request.query_params.get("since") or default


def _day(text: str, name: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidMessage(f"{name}={text!r} is not a date", hint="write it as 2026-12-31") from None


def _model(messages: tuple[Message, ...]) -> str | None:
    """The model version of the conversation's latest bot reply."""
    return next((m.meta["model"] for m in reversed(messages) if m.meta.get("model")), None)


def _handover_text(handover: Handover | None) -> str:
    if handover is None:
        return "the bot answers"
    return {
        "waiting": f"waiting for a person ({handover.reason})",
        "taken": f"{handover.staff} has it",
        "returned": "handed back to the bot",
        "closed": f"closed by {handover.staff}",
    }[handover.state]


def _handover_json(handover: Handover) -> dict[str, Any]:
    return {
        "conversation_id": handover.conversation_id,
        "state": handover.state,
        "reason": handover.reason,
        "staff": handover.staff,
        "requested_at": handover.requested_at.isoformat(),
        "updated_at": handover.updated_at.isoformat(),
    }


def _message_json(
    message: Message, ratings: dict[int, int], corrections: dict[int, Correction]
) -> dict[str, Any]:
    if message.role == "user":
        author, label = "user", "customer" + (" (to a person)" if message.meta.get("to") == "person" else "")
    elif message.meta.get("author") == "person":
        author, label = "person", f"{message.meta.get('staff', 'a person')} (a person)"
    else:
        author, label = "bot", "bot"
    rating = ratings.get(message.id)
    correction = corrections.get(message.id)
    return {
        "id": message.id,
        "seq": message.seq,
        "role": message.role,
        "author": author,
        "label": label,
        "content": message.content,
        "at": message.created_at.isoformat(),
        "model": message.meta.get("model") if author == "bot" else None,
        "rating": None if rating is None else ("up" if rating > 0 else "down"),
        "correction": None if correction is None else _record_json(correction),
    }


def _record_json(record: object) -> dict[str, Any]:
    """A frozen record (a handover, a message, a correction) as JSON."""
    fields = getattr(record, "__dataclass_fields__", {})
    values = {name: getattr(record, name) for name in fields}
    return json.loads(
        json.dumps(values, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))
    )


class WithConsole:
    """An ASGI app: ``/staff`` to the console (or, when no staff account is set, a 404 that says
    how to turn it on), everything else to the chat. The console sits outside the chat's own
    access rules: the customer's basic auth and cookie mean nothing there."""

    def __init__(self, chat: Any, console: Starlette | None) -> None:
        self.chat = chat
        self.console = console

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] in ("http", "websocket") else ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            await self.chat(scope, receive, send)
        elif self.console is not None:
            await self.console(scope, receive, send)
        else:
            off = PlainTextResponse(
                "The staff console is off: set CHATBOT_STAFF to name:password pairs to turn it on.\n",
                status_code=404,
            )
            await off(scope, receive, send)


__all__ = ["PREFIX", "StaffConsole", "WithConsole"]
