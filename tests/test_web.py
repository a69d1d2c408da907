"""The web chat, served for real (`chatbot serve --channel web`) and talked to by real clients:
``gradio_client`` for the API and Debian's chromium, driven by Playwright, for the page."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PostgresServer
from served import free_port, run_to_end
from web_served import Server, new_cookie, screenshot, texts, wait_for

from chatbot import SQLStore
from plugins.web.access import COOKIE, Credentials, conversation_id, session_token

ROOT = Path(__file__).resolve().parents[1]
HANDOVER = "Passing you to a colleague now."
EXAMPLE = "Where is my order?"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    store = tmp_path_factory.mktemp("web") / "conversations.db"
    running = Server(tiny_model_dir, store, "--handover-text", HANDOVER, "--example", EXAMPLE)
    yield running
    assert running.stop() == 0, running.output()


def stored(server: Server, cookie: str) -> Any:
    with SQLStore(f"sqlite:///{server.store}") as store:
        return store.get_conversation(conversation_id(cookie))


# -- the API, with gradio_client ----------------------------------------------------------


def test_a_conversation_remembers_its_turns_and_is_stored(server: Server) -> None:
    cookie = new_cookie()
    client = server.client(cookie)
    client.predict("Where is my order?", api_name="/chat")
    chat, box = client.predict("It was order 123", api_name="/chat")
    assert box == {"__type__": "update"} or box == ""
    shown = texts(chat)
    assert [role for role, _ in shown] == ["user", "assistant", "user", "assistant"]
    assert shown[0][1] == "Where is my order?" and shown[2][1] == "It was order 123"
    conversation = stored(server, cookie)
    assert [m.content for m in conversation.messages if m.role == "user"] == [
        "Where is my order?",
        "It was order 123",
    ]
    first, second = (m for m in conversation.messages if m.role == "assistant")
    assert second.meta["prompt_tokens"] > first.meta["prompt_tokens"]  # the first turn went into the prompt
    assert conversation.metadata == {"channel": "web"}
    # the page adds the handover text to a reply flagged for a person; the store keeps the reply alone
    assert first.meta["handover"] and shown[1][1] == f"{first.content}\n\n*{HANDOVER}*"


def test_replies_stream_in_several_growing_updates(server: Server) -> None:
    client = server.client(new_cookie())
    job = client.submit("Can I return my shoes?", api_name="/chat")
    updates = [texts(chat) for chat, _ in job]
    replies = [shown[-1][1] for shown in updates if shown and shown[-1][0] == "assistant"]
    partial = [r for r in replies if HANDOVER not in r and r != "…"]
    assert len(partial) >= 3, updates
    assert all(a == b[: len(a)] for a, b in itertools.pairwise(partial))  # each one grows
    assert replies[-1].startswith(partial[-1])


def test_two_visitors_at_once_keep_separate_conversations(server: Server) -> None:
    cookies = [new_cookie(), new_cookie()]
    questions = ["I want a refund", "My parcel is damaged"]

    def talk(cookie: str, question: str) -> list[tuple[str, str]]:
        client = server.client(cookie)
        client.predict(question, api_name="/chat")
        return texts(client.predict(question + " again", api_name="/chat")[0])

    with ThreadPoolExecutor(2) as pool:
        shown = list(pool.map(talk, cookies, questions))
    for cookie, question, chat in zip(cookies, questions, shown, strict=True):
        assert [text for role, text in chat if role == "user"] == [question, question + " again"]
        assert [m.content for m in stored(server, cookie).messages if m.role == "user"] == [
            question,
            question + " again",
        ]


def test_a_long_reply_does_not_hold_up_another_visitors_reply(
    tiny_model_factory: Any, tmp_path: Path
) -> None:
    model = tiny_model_factory(n_positions=1024, n_embd=128, n_layer=4)
    running = Server(model, tmp_path / "c.db", "--max-new-tokens", "900")
    cookies = [new_cookie(), new_cookie()]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda c: running.client(c).predict("hello", api_name="/chat"), cookies))
        spans = []
        for cookie in cookies:
            asked, answered = stored(running, cookie).messages
            assert answered.meta["reply_tokens"] > 300  # long enough to overlap
            spans.append((asked.created_at, answered.created_at))
    finally:
        assert running.stop() == 0
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # generated at the same time


def test_sigterm_mid_reply_closes_the_port_finishes_the_reply_and_exits_0(
    tiny_model_factory: Any, tmp_path: Path
) -> None:
    model = tiny_model_factory(n_positions=1024, n_embd=128, n_layer=4)
    running = Server(model, tmp_path / "c.db", "--max-new-tokens", "900")
    cookie = new_cookie()
    job = running.client(cookie).submit("hello", api_name="/chat")
    wait_for(lambda: len(job.outputs()) >= 2)  # the reply is streaming
    running.process.send_signal(signal.SIGTERM)
    running.wait_for_line(r"stopping: finishing the replies in progress")
    with pytest.raises(OSError):  # no new customers
        urllib.request.urlopen(running.url, timeout=5)
    chat, _ = job.result(timeout=120)
    running.process.wait(timeout=60)
    assert running.stop() == 0  # (stop() only collects the exit code of a process that ended)
    _, answered = stored(running, cookie).messages
    assert answered.meta["finish_reason"] in ("stop", "length") and answered.meta["reply_tokens"] > 100
    assert texts(chat)[-1][1].startswith(answered.content)  # (a handover note may follow)


def test_a_client_without_cookies_has_one_conversation_per_session(server: Server) -> None:
    first, second = server.client(), server.client()
    first.predict("hello from the first", api_name="/chat")
    second.predict("hello from the second", api_name="/chat")
    assert [t for r, t in texts(first.predict(api_name="/history")) if r == "user"] == [
        "hello from the first"
    ]
    assert [t for r, t in texts(second.predict(api_name="/history")) if r == "user"] == [
        "hello from the second"
    ]


def test_a_reload_restores_the_conversation_and_others_never_see_it(server: Server) -> None:
    cookie = new_cookie()
    server.client(cookie).predict("Do you ship to Canada?", api_name="/chat")
    restored = texts(server.client(cookie).predict(api_name="/history"))  # a new page load, same browser
    assert restored[0] == ("user", "Do you ship to Canada?") and restored[1][0] == "assistant"
    assert texts(server.client(new_cookie()).predict(api_name="/history")) == []


def test_feedback_reaches_the_store_and_shows_after_a_reload(server: Server) -> None:
    cookie = new_cookie()
    client = server.client(cookie)
    client.predict("My card was charged twice", api_name="/chat")
    assert "rated down" in client.predict(1, "down", api_name="/feedback")
    reply = stored(server, cookie).messages[1]
    with SQLStore(f"sqlite:///{server.store}") as store:
        assert [(f.message_id, f.rating) for f in store.feedback(reply.conversation_id)] == [(reply.id, -1)]
    assert server.client(cookie).predict(api_name="/history")["feedback_value"] == ["Dislike"]
    with pytest.raises(Exception, match="no reply at position 0"):
        client.predict(0, "up", api_name="/feedback")  # a customer's own message


def test_new_conversation_starts_over_and_keeps_the_transcript(server: Server) -> None:
    cookie = new_cookie()
    client = server.client(cookie)
    client.predict("first question", api_name="/chat")
    assert texts(client.predict(api_name="/new_conversation")) == []
    client.predict("second question", api_name="/chat")
    assert [t for r, t in texts(client.predict(api_name="/history")) if r == "user"] == ["second question"]
    with SQLStore(f"sqlite:///{server.store}") as store:
        transcript = store.transcript(conversation_id(cookie))
    assert [m.content for m in transcript if m.role == "user"] == ["first question", "second question"]


def test_empty_input_sends_nothing_and_an_oversized_one_shows_the_error(server: Server) -> None:
    cookie = new_cookie()
    client = server.client(cookie)
    client.predict("hello", api_name="/chat")
    assert client.predict("   ", api_name="/chat") == ({"__type__": "update"}, {"__type__": "update"})
    chat, box = client.predict("x" * 5000, api_name="/chat")
    assert box == {"__type__": "update"}  # the text stays in the box, nothing is lost
    shown = texts(chat)
    assert shown[-1][0] == "assistant" and "5000 characters long; the limit is 4000" in shown[-1][1]
    assert [m.content for m in stored(server, cookie).messages if m.role == "user"] == ["hello"]
    client.predict("still there?", api_name="/chat")  # and the conversation goes on
    assert [m.content for m in stored(server, cookie).messages if m.role == "user"] == [
        "hello",
        "still there?",
    ]


def test_a_customer_asks_for_a_person_who_takes_over_and_answers_in_the_page(
    server: Server, tiny_model_dir: Path
) -> None:
    """The page's half of the loop; the staff member's half goes through the engine on the same
    store, as the staff console (or another replica) will."""
    from chatbot import Engine

    cookie = new_cookie()
    client = server.client(cookie)
    client.predict("My parcel is lost", api_name="/chat")
    asked, _ = client.predict(api_name="/talk_to_a_person")
    assert texts(asked)[-1] == ("assistant", f"*{HANDOVER}*")  # said, not stored
    key = conversation_id(cookie)
    with Engine.from_folder(tiny_model_dir, store=server.store) as staff:
        # waiting: asked for now, or already when the tiny model's unsure first reply was flagged
        assert [h.state for h in staff.queue() if h.conversation_id == key] == ["waiting"]
        staff.take(key, "ada")
        chat, box = client.predict("Hello? Is anyone there?", api_name="/chat")
        assert box == ""  # stored for the person: the box empties
        shown = texts(chat)
        assert shown[-2] == ("user", "Hello? Is anyone there?")
        assert "has your conversation and answers here" in shown[-1][1]
        staff.person_reply(key, "ada", "Hi, I'm Ada. I have sent a new parcel today.")
        restored = texts(client.predict(api_name="/history"))
        assert restored[-1] == (
            "assistant",
            "Hi, I'm Ada. I have sent a new parcel today.\n\n*— a person from our support team*",
        )
        assert [m.role for m in stored(server, cookie).messages[-2:]] == ["user", "assistant"]
        staff.hand_back(key, "ada")
    chat, _ = client.predict("Thanks!", api_name="/chat")  # the bot answers again
    assert texts(chat)[-2] == ("user", "Thanks!") and texts(chat)[-1][0] == "assistant"


# -- start-up, shutdown and access -------------------------------------------------------


def test_a_broken_model_folder_stops_start_up_before_a_port_opens(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    result = serve_once(tmp_path / "model", "--port", str(free_port()), "--store", str(tmp_path / "c.db"))
    assert result.returncode == 1
    assert "error:" in result.stderr and "config.json" in result.stderr
    assert "web chat on" not in result.stdout


def test_a_port_in_use_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = serve_once(tiny_model_dir, "--port", str(port), "--store", str(tmp_path / "c.db"))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr and "--port" in result.stderr


def test_basic_auth_from_the_environment_guards_every_route(tiny_model_dir: Path, tmp_path: Path) -> None:
    secret = "s3cret-Pa55:with-colon"
    env = {"CHATBOT_WEB_AUTH": f"agent:{secret}", "CHATBOT_LOG_FORMAT": "json"}
    running = Server(tiny_model_dir, tmp_path / "c.db", env=env)
    try:
        for path in ("", "config", "gradio_api/info"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(running.url + path, timeout=30)
            assert refused.value.code == 401 and "Basic" in refused.value.headers["WWW-Authenticate"]
        wrong = base64.b64encode(b"agent:guess").decode()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(
                urllib.request.Request(running.url, headers={"Authorization": f"Basic {wrong}"}), timeout=30
            )
        right = base64.b64encode(f"agent:{secret}".encode()).decode()
        client = running.client(Authorization=f"Basic {right}")
        chat, _ = client.predict("hello there", api_name="/chat")
        assert texts(chat)[0] == ("user", "hello there")
        # the operator's endpoints answer probes and scrapers without the password
        for path, expected in (("healthz", "ok"), ("readyz", "ready")):
            with urllib.request.urlopen(running.url + path, timeout=30) as response:
                assert response.read().decode().strip() == expected
        with urllib.request.urlopen(running.url + "metrics", timeout=30) as response:
            metrics = response.read().decode()
        assert re.search(r'^chatbot_replies_total\{finish_reason="(stop|length)"\} 1\.0$', metrics, re.M)
        assert re.search(r"^chatbot_first_token_seconds_count 1\.0$", metrics, re.M)
    finally:
        assert running.stop() == 0
    assert "basic auth" in running.output() and secret not in running.output()
    # one JSON line per reply, with its conversation, and without what the customer typed
    (line,) = [json.loads(x) for x in running.output().splitlines() if x.startswith("{") and '"reply"' in x]
    assert line["event"] == "reply" and line["conversation_id"].startswith("web-")
    assert line["reply_tokens"] > 0 and "hello there" not in json.dumps(line)


def test_a_malformed_auth_setting_stops_start_up_without_echoing_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    flags = ("--port", "0", "--store", str(tmp_path / "c.db"))
    result = serve_once(tiny_model_dir, *flags, env={"CHATBOT_WEB_AUTH": "no-colon-secret"})
    assert result.returncode == 1 and "user:password" in result.stderr
    assert "no-colon-secret" not in result.stderr + result.stdout


def test_credentials_compare_and_never_show_the_password() -> None:
    credentials = Credentials.from_environment({"CHATBOT_WEB_AUTH": "ann:pa:ss"})
    assert credentials == Credentials("ann", "pa:ss") and "pa:ss" not in repr(credentials)
    assert credentials.accepts("Basic " + base64.b64encode(b"ann:pa:ss").decode())
    for header in (
        None,
        "",
        "Basic",
        "Basic !!!",
        "Bearer x",
        "Basic " + base64.b64encode(b"ann:pa").decode(),
    ):
        assert not credentials.accepts(header)
    assert Credentials.from_environment({}) is None


def test_session_tokens_are_read_from_the_cookie_header_only_when_well_formed() -> None:
    token = new_cookie()
    assert session_token(f"other=1; {COOKIE}={token}") == token
    for header in (None, "", f"{COOKIE}=short", 'bad="', "other=1"):
        assert session_token(header) is None
    assert conversation_id(token) != conversation_id(new_cookie()) and token not in conversation_id(token)


def serve_once(model_dir: Path, *flags: str, env: dict[str, str] | None = None) -> Any:
    """Run the web chat to its end (a refused start-up) and return what it printed."""
    return run_to_end(
        ["serve", "--channel", "web", str(model_dir), *flags], env={**os.environ, **(env or {})}
    )


# -- the page, in a real browser ----------------------------------------------------------


def _what_the_page_showed(page: Any, server: Server, name: str) -> AssertionError:
    """A failed browser test says what the page showed and what the server printed (and keeps a
    screenshot)."""
    screenshot(page, name)
    shown = page.locator('[data-testid="bot"], [data-testid="user"]').all_inner_texts()
    return AssertionError(f"the page showed {shown}; the server printed:\n{server.output()[-4000:]}")


def test_a_customer_chats_in_the_page_rates_a_reply_and_reloads(server: Server, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    outside: list[str] = []
    host = re.match(r"(http://[^/]+)", server.url).group(1)  # type: ignore[union-attr]

    def no_internet(route: Any) -> None:  # the page must load and work with no network
        if route.request.url.startswith((host, "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", no_internet)
    page = context.new_page()
    try:
        page.goto(server.url)
        wait_for(lambda: page.evaluate("document.activeElement.closest('#message') !== null"))  # type away
        page.get_by_role("button", name=re.compile(f"example 1: {EXAMPLE}")).click()  # an example question
        bots = page.locator('[data-testid="bot"]')
        bots.first.get_by_text(HANDOVER).wait_for(timeout=30_000)
        page.locator("#message textarea").fill("And when will it arrive?")
        page.keyboard.press("Enter")
        bots.nth(1).get_by_text(HANDOVER).wait_for(timeout=30_000)
        users = page.locator('[data-testid="user"]')
        assert users.all_inner_texts() == [EXAMPLE, "And when will it arrive?"]
        assert page.locator("#message textarea").input_value() == ""

        cookie = next(c["value"] for c in context.cookies() if c["name"] == COOKIE)
        page.locator('button[aria-label="Like"]').last.click()
        reply = [m for m in stored(server, cookie).messages if m.role == "assistant"][-1]
        with SQLStore(f"sqlite:///{server.store}") as store:
            wait_for(
                lambda: (
                    [(f.message_id, f.rating) for f in store.feedback(reply.conversation_id)]
                    == [(reply.id, 1)]
                )
            )

        page.reload()
        users.nth(1).wait_for(timeout=30_000)
        assert users.all_inner_texts() == [EXAMPLE, "And when will it arrive?"]
        screenshot(page, "web-chat")
    except Exception as error:
        raise _what_the_page_showed(page, server, "web-chat-failed") from error
    finally:
        context.close()
    assert outside == [], f"the page fetched from outside this server: {outside}"


def test_a_staff_members_answer_appears_in_the_open_page_without_a_reload(
    server: Server, browser: Any, tiny_model_dir: Path
) -> None:
    from chatbot import Engine

    context = browser.new_context(viewport={"width": 1000, "height": 760})
    page = context.new_page()
    try:
        page.goto(server.url)
        wait_for(lambda: page.evaluate("document.activeElement.closest('#message') !== null"))
        page.get_by_role("button", name=re.compile(f"example 1: {EXAMPLE}")).click()  # as a customer starts
        bots = page.locator('[data-testid="bot"]')
        bots.first.get_by_text(HANDOVER).wait_for(timeout=30_000)
        page.locator("#talk-to-a-person").click()
        cookie = next(c["value"] for c in context.cookies() if c["name"] == COOKIE)
        key = conversation_id(cookie)
        with Engine.from_folder(tiny_model_dir, store=server.store) as staff:
            wait_for(lambda: any(h.conversation_id == key for h in staff.queue()))
            staff.take(key, "ada")
            staff.person_reply(key, "ada", "Hi, I'm Ada: a new parcel leaves today.")
            page.get_by_text("Hi, I'm Ada: a new parcel leaves today.").wait_for(timeout=15_000)  # no reload
            assert page.get_by_text("a person from our support team").count() >= 1
            staff.hand_back(key, "ada")
        screenshot(page, "web-chat-person")
    except Exception as error:
        raise _what_the_page_showed(page, server, "web-chat-person-failed") from error
    finally:
        context.close()


def test_a_store_that_fails_as_the_page_loads_is_said_and_the_box_still_opens(
    tiny_model_dir: Path, browser: Any, postgres_server: PostgresServer
) -> None:
    database = PostgresServer(postgres_server.bindir)  # its own server: this test stops it
    running = Server(tiny_model_dir, database.new_database())
    context = browser.new_context()
    try:
        database.pause()  # the store is down as the visitor arrives
        page = context.new_page()
        page.goto(running.url)
        notice = page.locator('[data-testid="bot"]').get_by_text("Your conversation could not be loaded")
        notice.wait_for(timeout=30_000)
        assert "cannot take messages right now" in notice.inner_text()  # no database URL, no SQL
        wait_for(page.locator("#message textarea").is_enabled)  # the visitor can still write
    finally:
        context.close()
        running.stop()
        database.stop()
    assert "StoreError" in running.output()  # the operator's log says what failed
