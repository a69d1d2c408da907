"""The Slack channel, run for real (`chatbot serve --channel slack`) against a local stand-in for
Slack's cloud (tests/slack_fake.py: a real HTTP Web API and a real Socket Mode websocket), with
requests signed exactly as Slack signs them."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from served import ServedProcess, run_to_end
from slack_fake import (
    FakeSlack,
    app_mention_event,
    event_callback,
    message_event,
    sign_request,
    slash_command_body,
)

from chatbot import SQLStore
from plugins.slack.bot import conversation_key, escape, plain_text, thread_of_link

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN, APP_TOKEN = "xoxb-test", "xapp-test"
NEVER = ("--handover-below", "-1000")  # the tiny random model is never sure: no handover unless asked
_ts = itertools.count(1)


def new_ts() -> str:
    return f"{1_700_000_000 + next(_ts)}.000100"


class Bot(ServedProcess):
    """The Slack app (HTTP mode unless SLACK_APP_TOKEN is set), once it said it is ready."""

    def __init__(self, model_dir: Path, store: Path, env: dict[str, str], *flags: str) -> None:
        args = ["serve", "--channel", "slack", str(model_dir), "--port", "0", "--store", str(store)]
        super().__init__([*args, "--max-new-tokens", "8", *flags], env=env)
        self.store = store
        ready = self.wait_for_line(r"serving events at (http://\S+)|connected in Socket Mode")
        self.url = ready.group(1) or ""

    def post(
        self, payload: dict[str, Any] | bytes, *, secret: str = SECRET, **headers: str
    ) -> tuple[int, str]:
        """POST to /slack/events as Slack does: the body signed with ``secret`` (unless headers say)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        kind = "application/x-www-form-urlencoded" if isinstance(payload, bytes) else "application/json"
        signed = {**sign_request(body, secret), "Content-Type": kind, **headers}
        request = urllib.request.Request(self.url, data=body, headers=signed, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode()


def environment(slack: FakeSlack, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    env.update(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SECRET, SLACK_API_URL=slack.api_url)
    return {**env, **extra}


def start_once(model_dir: Path, store: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the bot to its end (a refused start-up) and return what it printed."""
    return run_to_end(
        ["serve", "--channel", "slack", str(model_dir), "--port", "0", "--store", str(store)], env=env
    )


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def bot(tiny_model_dir: Path, slack: FakeSlack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    store = tmp_path_factory.mktemp("slack") / "conversations.db"
    running = Bot(tiny_model_dir, store, environment(slack), *NEVER)
    yield running
    assert running.stop() == 0, running.output()
    for secret in (SECRET, BOT_TOKEN, APP_TOKEN):
        assert secret not in running.output()


def replies(slack: FakeSlack, channel: str) -> list[Any]:
    return [m for m in slack.messages if m.channel == channel]


def finished(slack: FakeSlack, channel: str, count: int = 1) -> list[Any]:
    """Wait until ``count`` replies in ``channel`` have their final text; return them."""

    def done(fake: FakeSlack) -> bool:
        return sum(1 for m in replies(fake, channel) if not m.streaming and not m.text.endswith("…")) >= count

    slack.wait_for(done, timeout=30)
    return replies(slack, channel)


def conversation(bot: Bot, team: str, channel: str, thread: str) -> Any:
    with SQLStore(f"sqlite:///{bot.store}") as store:
        return store.get_conversation(conversation_key(team, channel, thread))


def handover(bot: Bot, team: str, channel: str, thread: str) -> Any:
    """The thread's handover in the engine's queue (shared with the web chat), if any."""
    with SQLStore(f"sqlite:///{bot.store}") as store:
        return store.handover(conversation_key(team, channel, thread))


# -- answering ----------------------------------------------------------------------------


def test_a_direct_message_is_acknowledged_at_once_and_answered_in_its_thread(
    bot: Bot, slack: FakeSlack
) -> None:
    ts = new_ts()
    started = time.monotonic()
    status, _ = bot.post(
        event_callback(message_event("Where is my order?", channel="D100", ts=ts), event_id="Ev1")
    )
    assert status == 200 and time.monotonic() - started < 3  # Slack's deadline for the acknowledgement
    (reply,) = finished(slack, "D100")
    assert reply.thread_ts == ts and reply.text not in ("", "…")  # streamed natively (chat.startStream)
    (started,) = [c for c in slack.calls_to("chat.startStream") if c.params["channel"] == "D100"]
    assert started.params["thread_ts"] == ts and started.response["ts"] == reply.ts
    stored = conversation(bot, "T0001", "D100", ts)
    assert (stored.messages[0].role, stored.messages[0].content) == ("user", "Where is my order?")
    assert (
        stored.messages[1].content.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        == reply.text
    )


def test_a_mention_is_answered_once_and_follow_ups_in_the_thread_continue_it(
    bot: Bot, slack: FakeSlack
) -> None:
    ts = new_ts()
    text = "<@UBOT> can I return shoes?"
    mention = event_callback(app_mention_event(text, channel="C200", ts=ts), event_id="Ev2a")
    as_message = event_callback(
        message_event(text, channel="C200", ts=ts, channel_type="channel"), event_id="Ev2b"
    )
    assert bot.post(mention)[0] == 200 and bot.post(as_message)[0] == 200  # one message, two events
    finished(slack, "C200")
    follow_up = message_event(
        "they are too small", channel="C200", ts=new_ts(), thread_ts=ts, channel_type="channel"
    )
    assert bot.post(event_callback(follow_up, event_id="Ev2c"))[0] == 200
    first, second = finished(slack, "C200", 2)
    assert first.thread_ts == second.thread_ts == ts
    stored = conversation(bot, "T0001", "C200", ts)
    assert [m.content for m in stored.messages if m.role == "user"] == [
        "can I return shoes?",
        "they are too small",
    ]
    chatter = message_event("lunch anyone?", channel="C200", ts=new_ts(), channel_type="channel")
    assert bot.post(event_callback(chatter, event_id="Ev2d"))[0] == 200  # not in a thread with the bot
    time.sleep(1)
    assert len(replies(slack, "C200")) == 2


def test_two_threads_are_two_conversations(bot: Bot, slack: FakeSlack) -> None:
    first, second = new_ts(), new_ts()
    bot.post(event_callback(message_event("first thread", channel="D300", ts=first), event_id="Ev3a"))
    bot.post(event_callback(message_event("second thread", channel="D300", ts=second), event_id="Ev3b"))
    threads = {m.thread_ts for m in finished(slack, "D300", 2)}
    assert threads == {first, second}
    assert conversation(bot, "T0001", "D300", first).messages[0].content == "first thread"
    assert conversation(bot, "T0001", "D300", second).messages[0].content == "second thread"


def test_retries_and_repeated_event_ids_are_answered_once(bot: Bot, slack: FakeSlack) -> None:
    payload = event_callback(message_event("hello?", channel="D400", ts=new_ts()), event_id="Ev4")
    assert bot.post(payload)[0] == 200
    finished(slack, "D400")
    for attempt in ("1", "2"):
        status, _ = bot.post(
            payload, **{"X-Slack-Retry-Num": attempt, "X-Slack-Retry-Reason": "http_timeout"}
        )
        assert status == 200
    bot.post(payload)  # the same event id again
    time.sleep(1.5)
    assert len(replies(slack, "D400")) == 1


def test_bots_itself_edits_and_joins_are_ignored(bot: Bot, slack: FakeSlack) -> None:
    events = [
        {**message_event("I am a bot", channel="D500", ts=new_ts()), "bot_id": "B999"},
        message_event("my own words", channel="D500", ts=new_ts(), user="UBOT"),
        message_event("edited", channel="D500", ts=new_ts(), subtype="message_changed"),
        message_event("deleted", channel="D500", ts=new_ts(), subtype="message_deleted"),
        message_event(
            "<@U1> has joined", channel="C500", ts=new_ts(), subtype="channel_join", channel_type="channel"
        ),
    ]
    before = len(slack.calls)
    for number, event in enumerate(events):
        assert bot.post(event_callback(event, event_id=f"Ev5{number}"))[0] == 200
    time.sleep(1.5)
    assert [c.method for c in slack.calls[before:] if c.method.startswith("chat.")] == []


def test_a_rate_limited_post_is_retried_after_retry_after(bot: Bot, slack: FakeSlack) -> None:
    slack.rate_limit("chat.startStream", times=1, retry_after=1)
    bot.post(event_callback(message_event("are you there?", channel="D600", ts=new_ts()), event_id="Ev6"))
    finished(slack, "D600")
    posts = [c for c in slack.calls_to("chat.startStream") if c.params.get("channel") == "D600"]
    assert [c.rate_limited for c in posts] == [True, False]
    assert posts[1].at - posts[0].at >= 1.0


def test_an_oversized_message_gets_the_engines_reason(bot: Bot, slack: FakeSlack) -> None:
    bot.post(event_callback(message_event("x" * 5000, channel="D700", ts=new_ts()), event_id="Ev7"))
    (reply,) = finished(slack, "D700")
    assert "can't take that message" in reply.text and "the limit is 4000" in reply.text


# -- requests that are refused -------------------------------------------------------------


def test_missing_wrong_and_stale_signatures_are_refused_with_401(bot: Bot, slack: FakeSlack) -> None:
    payload = event_callback(message_event("sign me", channel="D800", ts=new_ts()), event_id="Ev8")
    body = json.dumps(payload).encode()
    stale = sign_request(body, SECRET, timestamp=int(time.time()) - 6 * 60)
    for headers in (
        {"X-Slack-Signature": "", "X-Slack-Request-Timestamp": ""},
        sign_request(body, "not-the-secret"),
        stale,
    ):
        assert bot.post(payload, **headers)[0] == 401
    assert bot.post(b"{not json", secret=SECRET, **{"Content-Type": "application/json"})[0] == 400
    assert bot.post(b"%%%", secret=SECRET)[0] == 400
    time.sleep(1)
    assert replies(slack, "D800") == []


# -- handover and the slash command --------------------------------------------------------


def test_a_handover_calls_a_person_and_the_bot_stays_quiet_until_resumed(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    env = environment(slack, SLACK_HANDOVER_MENTION="<!subteam^S0HELP>")
    running = Bot(tiny_model_dir, tmp_path / "c.db", env, "--handover-text", "A person will take over.")
    try:
        thread = new_ts()
        running.post(
            event_callback(message_event("I want a human", channel="D900", ts=thread), event_id="Ev9a")
        )
        (reply,) = finished(slack, "D900")
        assert reply.text.endswith("\n\n<!subteam^S0HELP> A person will take over.")
        quiet = message_event("hello??", channel="D900", ts=new_ts(), thread_ts=thread)
        running.post(event_callback(quiet, event_id="Ev9b"))
        time.sleep(1.5)
        assert len(replies(slack, "D900")) == 1  # a person has the thread
        asked = handover(running, "T0001", "D900", thread)
        assert (asked.state, asked.reason) == ("waiting", "flagged")  # in the support team's queue

        link = f"https://fake.slack.com/archives/D900/p{thread.replace('.', '')}"
        status, text = running.post(slash_command_body("/chatbot", f"status {link}"))
        assert status == 200 and "a person has it" in text
        status, text = running.post(slash_command_body("/chatbot", f"resume <{link}>"))
        assert status == 200 and "answer in that thread again" in text
        assert handover(running, "T0001", "D900", thread).state == "returned"
        again = message_event("still there?", channel="D900", ts=new_ts(), thread_ts=thread)
        running.post(event_callback(again, event_id="Ev9c"))
        finished(slack, "D900", 2)  # flagged again: a person is asked in again
        key = conversation_key("T0001", "D900", thread)
        with SQLStore(f"sqlite:///{running.store}") as store:
            store.take_handover(key, "ada")  # as the staff console will
            status, text = running.post(slash_command_body("/chatbot", f"resume {link}"))
            assert status == 200 and "Not done: ada has conversation" in text  # one person at a time
            store.return_handover(key, "ada")
        status, text = running.post(slash_command_body("/chatbot", f"reset {link}"))
        assert "starts over" in text
        assert conversation(running, "T0001", "D900", thread).messages == ()
        assert "Usage" in running.post(slash_command_body("/chatbot", "help"))[1]
        assert "no conversation" in running.post(slash_command_body("/chatbot", "status " + link + "9"))[1]
    finally:
        assert running.stop() == 0
    for secret in (SECRET, BOT_TOKEN):
        assert secret not in running.output()


# -- restarts, start-up and Socket Mode ----------------------------------------------------


def test_a_restart_in_between_still_answers_a_retried_event_once(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    payload = event_callback(
        message_event("one answer please", channel="D1000", ts=new_ts()), event_id="Ev10"
    )
    first = Bot(tiny_model_dir, tmp_path / "c.db", environment(slack), *NEVER)
    try:
        first.post(payload)
        finished(slack, "D1000")
    finally:
        assert first.stop() == 0
    second = Bot(tiny_model_dir, tmp_path / "c.db", environment(slack), *NEVER)
    try:
        assert (
            second.post(payload, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"})[0] == 200
        )
        time.sleep(1.5)
    finally:
        assert second.stop() == 0
    assert len(replies(slack, "D1000")) == 1 and "already answered" in second.output()


def test_without_native_streaming_a_placeholder_is_edited_as_the_reply_is_written(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as slack:
        slack.without_streaming()  # chat.startStream: unknown_method
        env = environment(slack)
        running = Bot(tiny_model_dir, tmp_path / "c.db", env, *NEVER, "--update-interval", "0")
        try:
            for number in (1, 2):
                event = message_event("tell me everything", channel="D1100", ts=new_ts())
                running.post(event_callback(event, event_id=f"Ev11{number}"))
                finished(slack, "D1100", number)
        finally:
            running.stop()
        assert len(slack.calls_to("chat.startStream")) == 1  # refused once, then not asked again
        reply = replies(slack, "D1100")[0]
    assert reply.texts[0] == "…"
    partial = [t.removesuffix(" …") for t in reply.texts[1:-1]]
    assert len(partial) >= 2 and all(t.endswith(" …") for t in reply.texts[1:-1])
    assert all(b.startswith(a) for a, b in itertools.pairwise([*partial, reply.text]))


@pytest.mark.parametrize(
    ("missing", "where"),
    [("SLACK_BOT_TOKEN", "OAuth & Permissions"), ("SLACK_SIGNING_SECRET", "Signing Secret")],
)
def test_a_missing_variable_stops_start_up_and_says_where_to_find_it(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path, missing: str, where: str
) -> None:
    env = environment(slack)
    del env[missing]
    result = start_once(tiny_model_dir, tmp_path / "c.db", env)
    assert result.returncode == 1 and missing in result.stderr and where in result.stderr
    assert SECRET not in result.stderr + result.stdout and BOT_TOKEN not in result.stderr + result.stdout


def test_a_token_slack_refuses_stops_start_up_without_showing_it(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    env = environment(slack, SLACK_BOT_TOKEN="xoxb-wrong-token-123")
    result = start_once(tiny_model_dir, tmp_path / "c.db", env)
    assert result.returncode == 1 and "Slack refused SLACK_BOT_TOKEN (invalid_auth)" in result.stderr
    assert "xoxb-wrong-token-123" not in result.stderr + result.stdout


def test_socket_mode_acknowledges_envelopes_and_answers_in_the_thread(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    env = environment(slack, SLACK_APP_TOKEN=APP_TOKEN)
    del env["SLACK_SIGNING_SECRET"]  # not needed: nothing comes in over HTTP
    running = Bot(tiny_model_dir, tmp_path / "c.db", env, *NEVER)
    try:
        slack.socket.wait_connected()
        ts = new_ts()
        envelope = slack.socket.send_event(
            message_event("hi over a socket", channel="D1200", ts=ts), event_id="Ev12"
        )
        ack = slack.socket.wait_for_ack(envelope, timeout=3)  # Slack's deadline
        assert ack.envelope_id == envelope
        (reply,) = finished(slack, "D1200")
        assert reply.thread_ts == ts
        retry = slack.socket.send_event(
            message_event("hi over a socket", channel="D1200", ts=ts),
            event_id="Ev12",
            retry_attempt=1,
            retry_reason="timeout",
        )
        slack.socket.wait_for_ack(retry, timeout=3)
        command = slack.socket.send_slash_command("/chatbot", "help")
        assert "Usage" in json.dumps(slack.socket.wait_for_ack(command, timeout=3).payload)
        time.sleep(1)
        assert len(replies(slack, "D1200")) == 1
    finally:
        assert running.stop() == 0
    assert APP_TOKEN not in running.output() and BOT_TOKEN not in running.output()


# -- the pieces ----------------------------------------------------------------------------


def test_replies_are_escaped_for_mrkdwn_and_messages_read_as_typed() -> None:
    assert escape("a < b & c > d <@U1>") == "a &lt; b &amp; c &gt; d &lt;@U1&gt;"
    typed = "<@UBOT>  is <https://shop.example/o/1|order 1> &amp; <mailto:a@b.c> for <@U42>? 2 &lt; 3"
    assert plain_text(typed, bot_user_id="UBOT") == "is order 1 & mailto:a@b.c for @U42? 2 < 3"


def test_message_links_name_their_thread() -> None:
    assert thread_of_link("https://x.slack.com/archives/C0A1/p1700000000000100") == (
        "C0A1",
        "1700000000.000100",
    )
    reply = "<https://x.slack.com/archives/C0A1/p1700000005000200?thread_ts=1700000000.000100&cid=C0A1>"
    assert thread_of_link(reply) == ("C0A1", "1700000000.000100")
    with pytest.raises(ValueError, match="not a link"):
        thread_of_link("https://example.com/")


def test_the_operators_endpoints_answer_beside_the_events(bot: Bot, slack: FakeSlack) -> None:
    base = bot.url.removesuffix("/slack/events")
    bot.post(
        event_callback(message_event("Is my parcel lost?", channel="D900", ts=new_ts()), event_id="EvOps")
    )
    finished(slack, "D900")
    for path, expected in (("/healthz", "ok"), ("/readyz", "ready")):
        with urllib.request.urlopen(base + path, timeout=10) as response:
            assert response.status == 200 and response.read().decode().strip() == expected
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert re.search(r'^chatbot_replies_total\{finish_reason="(stop|length)"\} [1-9]', metrics, re.M)
    assert "chatbot_scheduler_queue_depth" in metrics
    assert SECRET not in metrics and BOT_TOKEN not in metrics
