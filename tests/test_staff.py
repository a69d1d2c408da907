"""The staff console, served for real beside the web chat (`chatbot serve --channel web` with
``CHATBOT_STAFF`` set), used by real HTTP clients and, in two browser contexts at once, by a
customer and a staff member."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_served import Server, new_cookie, screenshot, texts, wait_for

from chatbot import ChannelError, Engine, SQLStore
from chatbot.feedback import export_feedback_file
from plugins.web.access import COOKIE, conversation_id
from plugins.web.staff import StaffConsole
from plugins.web.staff_access import SESSION_S, STAFF_COOKIE, StaffAccounts

ADA, GRACE = ("ada", "ada-password-1"), ("grace", "grace-password-2")
STAFF = f"{ADA[0]}:{ADA[1]} {GRACE[0]}:{GRACE[1]}"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    store = tmp_path_factory.mktemp("staff") / "conversations.db"
    running = Server(tiny_model_dir, store, env={"CHATBOT_STAFF": STAFF})
    yield running
    assert running.stop() == 0, running.output()


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def call(
    server: Server,
    method: str,
    path: str,
    *,
    staff: tuple[str, str] | None = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request to the console, redirects not followed, errors returned rather than raised."""
    sent = dict(headers or {})
    if staff is not None:
        sent["Authorization"] = "Basic " + base64.b64encode(f"{staff[0]}:{staff[1]}".encode()).decode()
    data = urllib.parse.urlencode(form).encode() if form is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data, method=method, headers=sent)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


def as_json(server: Server, method: str, path: str, staff: tuple[str, str], **form: str) -> Answer:
    return call(server, method, path, staff=staff, form=form or None, headers={"Accept": "application/json"})


def quoted(key: str) -> str:
    return urllib.parse.quote(key, safe="")


# Every route of the console, with a harmless argument: each must refuse a request without staff
# credentials. The list is checked against the app's own routes, so a new route cannot skip it.
ROUTES = [
    ("POST", "/staff/logout"),
    ("GET", "/staff"),
    ("GET", "/staff/"),
    ("GET", "/staff/api/queue"),
    ("GET", "/staff/conversations/{cid}"),
    ("GET", "/staff/api/conversations/{cid}"),
    ("POST", "/staff/conversations/{cid}/take"),
    ("POST", "/staff/conversations/{cid}/reply"),
    ("POST", "/staff/conversations/{cid}/hand-back"),
    ("GET", "/staff/review"),
    ("GET", "/staff/api/review"),
    ("POST", "/staff/replies/{message_id}/correction"),
]
OPEN_ROUTES = [("GET", "/staff/login"), ("POST", "/staff/login")]


def test_the_list_of_routes_is_every_route_of_the_console() -> None:
    app = StaffConsole(None, StaffAccounts.parse(STAFF)).app()  # type: ignore[arg-type]
    routes = {(method, re.sub(r":int}", "}", route.path)) for route in app.routes for method in route.methods}
    assert routes - {("HEAD", path) for _, path in ROUTES + OPEN_ROUTES} == set(ROUTES + OPEN_ROUTES)


def test_every_staff_route_refuses_a_request_without_staff_credentials(server: Server) -> None:
    customer = server.client(cookie := new_cookie())
    customer.predict("My parcel is lost", api_name="/chat")
    key = conversation_id(cookie)
    message_id = next(m.id for m in SQLStore(f"sqlite:///{server.store}").get_conversation(key).messages)
    wrong = ("ada", "not-her-password")
    for method, template in ROUTES:
        path = template.format(cid=quoted(key), message_id=message_id)
        form = {"text": "You are all fired"} if method == "POST" else None
        for credentials in (
            {},
            {"Cookie": f"{COOKIE}={cookie}"},
            {"Cookie": f"{STAFF_COOKIE}=ada.9999999999.0"},
        ):
            answer = call(server, method, path, form=form, headers=credentials)
            where = f"{method} {path} with {list(credentials) or 'nothing'}"
            if method == "GET" and "/api/" not in path:  # a page: to the sign-in form, showing nothing
                assert answer.status == 303, where
                assert answer.headers["location"].startswith("/staff/login?next="), where
            else:
                assert answer.status == 401, where
                assert "Staff only" in answer.text and "WWW-Authenticate" in answer.headers, where
        answer = call(server, method, path, staff=wrong, form=form)
        assert answer.status in (303, 401), f"{method} {path} with a wrong password"
    stored = SQLStore(f"sqlite:///{server.store}").get_conversation(key)
    assert [m.content for m in stored.messages if m.role == "user"] == ["My parcel is lost"]
    assert SQLStore(f"sqlite:///{server.store}").corrections(key) == ()


def test_signing_in_gives_a_session_of_the_console_only_and_a_wrong_password_is_refused(
    server: Server,
) -> None:
    refused = call(
        server, "POST", "/staff/login", form={"name": "ada", "password": "guess", "next": "/staff/"}
    )
    assert refused.status == 401 and "do not match a staff account" in refused.text
    assert "guess" not in refused.text  # a password is never shown back
    signed = call(
        server, "POST", "/staff/login", form={"name": ADA[0], "password": ADA[1], "next": "/staff/review"}
    )
    assert signed.status == 303 and signed.headers["location"] == "/staff/review"
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"{STAFF_COOKIE}=") and "HttpOnly" in cookie and "Path=/staff" in cookie
    assert "samesite=strict" in cookie.lower()
    session = cookie.split(";")[0]
    page = call(server, "GET", "/staff/", headers={"Cookie": session})
    assert page.status == 200 and "Waiting for a person" in page.text and ">ada<" in page.text
    elsewhere = call(
        server,
        "POST",
        "/staff/login",
        form={"name": ADA[0], "password": ADA[1], "next": "https://evil.example/"},
    )
    assert elsewhere.headers["location"] == "/staff/"  # never sent to another site
    forged = call(
        server, "POST", "/staff/logout", headers={"Cookie": session, "Origin": "https://evil.example"}
    )
    assert forged.status == 403  # a form posted from another site is refused


def test_a_staff_member_takes_answers_and_hands_back_a_conversation_the_customer_asked_for(
    server: Server,
) -> None:
    customer = server.client(cookie := new_cookie())
    customer.predict("My parcel is lost", api_name="/chat")
    customer.predict(api_name="/talk_to_a_person")
    key = conversation_id(cookie)
    queue = as_json(server, "GET", "/staff/api/queue", ADA).json()["queue"]
    item = next(i for i in queue if i["conversation_id"] == key)
    reply = SQLStore(f"sqlite:///{server.store}").get_conversation(key).messages[-1]
    assert (item["state"], item["channel"], item["last"]) == ("waiting", "web", reply.content)
    assert item["model"] == reply.meta["model"]  # the version that answered
    conversation = as_json(server, "GET", f"/staff/api/conversations/{quoted(key)}", ADA).json()
    assert [m["author"] for m in conversation["messages"]] == ["user", "bot"]

    taken = as_json(server, "POST", f"/staff/conversations/{quoted(key)}/take", ADA)
    assert taken.status == 200 and taken.json()["staff"] == "ada"
    held = as_json(server, "POST", f"/staff/conversations/{quoted(key)}/take", GRACE)
    assert held.status == 409 and "ada has conversation" in held.json()["error"]
    for text, why in (("   ", "the message is empty"), ("x" * 4001, "4001 characters long")):
        refused = as_json(server, "POST", f"/staff/conversations/{quoted(key)}/reply", ADA, text=text)
        assert refused.status == 422 and why in refused.json()["error"]
    not_holder = as_json(server, "POST", f"/staff/conversations/{quoted(key)}/reply", GRACE, text="Hi")
    assert not_holder.status == 409 and "ada has it" in not_holder.json()["error"]
    draft = "A long answer " * 300
    page = call(server, "POST", f"/staff/conversations/{quoted(key)}/reply", staff=ADA, form={"text": draft})
    assert page.status == 422 and "4200 characters long" in page.text
    assert f">{draft}</textarea>" in page.text  # what she typed is still in the box

    customer.predict("Are you there?", api_name="/chat")  # stored for the person, the bot is quiet
    conversation = as_json(server, "GET", f"/staff/api/conversations/{quoted(key)}", ADA).json()
    assert conversation["messages"][-1]["label"] == "customer (to a person)"
    sent = as_json(
        server, "POST", f"/staff/conversations/{quoted(key)}/reply", ADA, text="I'm Ada: it leaves today."
    )
    assert sent.status == 200
    assert texts(customer.predict(api_name="/history"))[-1] == (
        "assistant",
        "I'm Ada: it leaves today.\n\n*— a person from our support team*",
    )
    back = as_json(server, "POST", f"/staff/conversations/{quoted(key)}/hand-back", ADA, close="1")
    assert back.json()["state"] == "closed"
    assert key not in [
        i["conversation_id"] for i in as_json(server, "GET", "/staff/api/queue", ADA).json()["queue"]
    ]
    chat, _ = customer.predict("Thanks!", api_name="/chat")  # the bot answers again
    assert texts(chat)[-1][0] == "assistant" and "a person" not in texts(chat)[-1][1]


def test_review_lists_disliked_replies_by_date_and_model_and_a_correction_is_exported(
    server: Server, tmp_path: Path
) -> None:
    customer = server.client(cookie := new_cookie())
    customer.predict("Where is my order?", api_name="/chat")
    customer.predict(1, "down", api_name="/feedback")
    key = conversation_id(cookie)
    review = as_json(server, "GET", "/staff/api/review", ADA).json()["review"]
    item = next(i for i in review if i["conversation_id"] == key and i["why"] == "disliked")
    assert item["asked"] == "Where is my order?" and item["reply"]["rating"] == "down"
    model = item["model"]
    assert model and [i["model"] for i in review] == [model] * len(review)
    assert as_json(server, "GET", f"/staff/api/review?model={model}", ADA).json()["review"]
    assert as_json(server, "GET", "/staff/api/review?model=v999", ADA).json()["review"] == []
    assert as_json(server, "GET", "/staff/api/review?until=2020-01-01", ADA).json()["review"] == []
    bad = as_json(server, "GET", "/staff/api/review?since=yesterday", ADA)
    assert bad.status == 422 and "is not a date" in bad.json()["error"]

    reply_id = item["reply"]["id"]
    empty = as_json(server, "POST", f"/staff/replies/{reply_id}/correction", ADA, text="")
    assert empty.status == 422
    corrected = as_json(
        server, "POST", f"/staff/replies/{reply_id}/correction", GRACE, text="It ships tomorrow."
    )
    assert corrected.status == 200 and corrected.json()["staff"] == "grace"
    review = as_json(server, "GET", "/staff/api/review", ADA).json()["review"]
    shown = next(i for i in review if i["conversation_id"] == key)["reply"]["correction"]
    assert (shown["content"], shown["staff"]) == ("It ships tomorrow.", "grace")
    page = call(server, "GET", "/staff/review", staff=ADA)
    assert "Correction by grace: It ships tomorrow." in page.text

    with SQLStore(f"sqlite:///{server.store}") as store:
        report = export_feedback_file(store, tmp_path / "out.jsonl")
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert records[key]["messages"][-1] == {
        "role": "assistant",
        "content": "It ships tomorrow.",
        "written_by": "correction",
    }
    assert report.corrections >= 1 and "corrected by people" in report.summary()


def test_without_staff_accounts_there_is_no_console_and_the_page_says_how_to_have_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    running = Server(tiny_model_dir, tmp_path / "c.db", env={"CHATBOT_STAFF": ""})
    try:
        assert "no staff console: set $CHATBOT_STAFF" in running.output()
        answer = call(running, "GET", "/staff/")
        assert answer.status == 404 and "set CHATBOT_STAFF" in answer.text
    finally:
        running.stop()


def test_staff_accounts_are_checked_and_never_shown() -> None:
    accounts = StaffAccounts.parse("ada:correct-horse,  grace:battery-staple")
    assert repr(accounts) == "StaffAccounts(names=['ada', 'grace'])"
    assert accounts.check("ada", "correct-horse") and not accounts.check("ada", "battery-staple")
    assert not accounts.check("nobody", "correct-horse")
    session = accounts.session("ada", now=1000.0)
    assert accounts.signed_in(session, now=1001.0) == "ada"
    assert accounts.signed_in(session, now=1000.0 + SESSION_S + 1) is None  # expired
    assert accounts.signed_in(session.replace("ada.", "grace.", 1), now=1001.0) is None  # forged
    assert (
        StaffAccounts.parse("ada:another-password").signed_in(session, now=1001.0) is None
    )  # password changed
    for value, why in (
        ("ada", "account 1 is not of the form name:password"),
        ("ada:short", "account 1 (ada) has a password shorter than 8"),
        ("ada:long-enough ada:long-enough-2", "account 2: ada is listed twice"),
        ("a/b:long-enough", "account 1 is not of the form"),
    ):
        with pytest.raises(ChannelError, match=re.escape(why)) as raised:
            StaffAccounts.parse(value)
        assert "long-enough" not in str(raised.value) and "short" not in str(raised.value).replace(
            "shorter", ""
        )


def test_a_customer_and_a_staff_member_in_two_browsers(server: Server, browser: Any) -> None:
    """The web half of the loop end to end: the customer asks for a person; a staff member signs
    in, sees the conversation in the queue, takes it, answers; the answer appears in the
    customer's open page; the customer's next message appears in the staff member's open page."""
    customer_context = browser.new_context(viewport={"width": 1000, "height": 760})
    staff_context = browser.new_context(viewport={"width": 1100, "height": 900})
    page, console = customer_context.new_page(), staff_context.new_page()
    try:
        page.goto(server.url)
        wait_for(lambda: page.evaluate("document.activeElement.closest('#message') !== null"))
        page.locator("#message textarea").fill("My parcel never came")
        page.keyboard.press("Enter")
        page.locator('[data-testid="bot"]').first.wait_for(timeout=30_000)
        page.locator("#talk-to-a-person").click()
        key = conversation_id(next(c["value"] for c in customer_context.cookies() if c["name"] == COOKIE))

        console.goto(server.url.rstrip("/") + "/staff/")
        console.get_by_label("Name").fill(ADA[0])
        console.get_by_label("Password").fill(ADA[1])
        console.get_by_role("button", name="Sign in").click()
        console.get_by_role("link", name=key).click(timeout=15_000)  # the queue lists it
        console.get_by_text("My parcel never came").wait_for()
        console.locator("#take").click()
        console.get_by_text("ada has it").wait_for()
        console.locator("#reply").fill("Hi, I'm Ada: a new parcel leaves today.")
        console.locator("#send").click()

        page.get_by_text("Hi, I'm Ada: a new parcel leaves today.").wait_for(timeout=15_000)  # no reload
        assert page.get_by_text("a person from our support team").count() >= 1
        page.locator("#message textarea").fill("Thank you, Ada!")
        page.keyboard.press("Enter")
        console.get_by_text("Thank you, Ada!").wait_for(timeout=15_000)  # live in the console
        screenshot(console, "staff-console")
        console.locator("#hand-back").click()
        console.get_by_text("handed back to the bot").wait_for()
        screenshot(page, "web-chat-with-staff")
    except Exception as error:
        screenshot(page, "staff-customer-failed")
        screenshot(console, "staff-console-failed")
        raise AssertionError(f"the server printed:\n{server.output()[-4000:]}") from error
    finally:
        customer_context.close()
        staff_context.close()


def test_the_engine_queue_is_what_the_console_shows(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The console adds nothing of its own: its queue is the engine's, in the engine's order."""
    with Engine.from_folder(tiny_model_dir, store=tmp_path / "c.db") as engine:
        for name in ("first", "second"):
            engine.start(name, metadata={"channel": "web"})
            engine.request_person(name, "asked")
        console = StaffConsole(engine, StaffAccounts.parse(STAFF))
        assert [item["conversation_id"] for item in console._queue()] == ["first", "second"]
