"""The fake Slack cloud, checked against the real slack_sdk and slack-bolt (no patching)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from slack_bolt import Ack as BoltAck
from slack_bolt import App, BoltRequest, Respond
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_fake import (
    FakeSlack,
    app_mention_event,
    event_callback,
    message_event,
    sign_request,
    slash_command_body,
)
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlack) -> WebClient:
    return WebClient(token=slack.bot_token, base_url=slack.api_url)


def test_auth_test_answers_like_slack(slack: FakeSlack, client: WebClient) -> None:
    assert slack.api_url.startswith("http://127.0.0.1:") and slack.api_url.endswith("/api/")
    answer = client.auth_test()
    assert answer["user_id"] == "UBOT" and answer["bot_id"] == "BBOT" and answer["team_id"] == "T0001"
    (call,) = slack.calls_to("auth.test")
    assert call.headers["authorization"] == "Bearer xoxb-test"
    assert call.response["ok"] is True and not call.rate_limited


def test_post_then_update_keeps_the_final_text_and_its_history(slack: FakeSlack, client: WebClient) -> None:
    first = client.chat_postMessage(channel="D1", text="Thinking…")
    second = client.chat_postMessage(channel="D1", text="another", thread_ts=first["ts"])
    assert float(second["ts"]) > float(first["ts"])
    assert first["message"]["user"] == "UBOT" and second["message"]["thread_ts"] == first["ts"]
    updated = client.chat_update(channel="D1", ts=first["ts"], text="Hello, how can I help?")
    assert updated["text"] == "Hello, how can I help?"

    posted = slack.messages
    assert [m.text for m in posted] == ["Hello, how can I help?", "another"]
    assert posted[0].texts == ["Thinking…", "Hello, how can I help?"]
    assert slack.message("D1", first["ts"]).text == "Hello, how can I help?"
    # chat.* methods go as JSON; the others as a form.
    assert slack.calls_to("chat.update")[0].headers["content-type"].startswith("application/json")

    with pytest.raises(SlackApiError) as missing:
        client.chat_update(channel="D1", ts="1.000000", text="x")
    assert missing.value.response["error"] == "message_not_found"

    replies = client.conversations_replies(channel="D1", ts=first["ts"])
    assert [m["text"] for m in replies["messages"]] == ["Hello, how can I help?", "another"]


def test_the_other_methods(slack: FakeSlack, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C1", text="hi")
    assert client.reactions_add(channel="C1", timestamp=posted["ts"], name="eyes")["ok"]
    assert slack.messages[0].reactions == ["eyes"]
    assert client.chat_postEphemeral(channel="C1", user="U123", text="psst")["message_ts"]
    slack.add_user("U9", "bob", "Bob Builder")
    assert client.users_info(user="U9")["user"]["real_name"] == "Bob Builder"
    assert client.users_info(user="U123")["user"]["id"] == "U123"
    assert slack.calls_to("users.info")[0].params == {"user": "U9"}  # a form body, parsed
    assert slack.calls_to("users.info")[0].headers["content-type"] == "application/x-www-form-urlencoded"
    assert client.bots_info(bot="BBOT")["bot"]["user_id"] == "UBOT"

    with pytest.raises(SlackApiError) as unknown:
        client.api_call("chat.scheduleMessage", json={"channel": "C1", "text": "later", "post_at": 1})
    assert unknown.value.response["error"] == "unknown_method"
    assert slack.calls_to("chat.scheduleMessage")[0].params["text"] == "later"

    slack.fail("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackApiError) as failed:
        client.chat_postMessage(channel="C1", text="x")
    assert failed.value.response["error"] == "channel_not_found"
    assert client.chat_postMessage(channel="C1", text="x")["ok"]


def test_wrong_tokens_are_refused(slack: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as wrong:
        WebClient(token="xoxb-wrong", base_url=slack.api_url).auth_test()
    assert wrong.value.response.status_code == 200 and wrong.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as missing:
        WebClient(base_url=slack.api_url).chat_postMessage(channel="C1", text="x")
    assert missing.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as bot_token:
        WebClient(token=slack.bot_token, base_url=slack.api_url).apps_connections_open(
            app_token=slack.bot_token
        )
    assert bot_token.value.response["error"] == "not_allowed_token_type"
    assert slack.messages == [] and len(slack.calls) == 3


def test_rate_limit_then_success_with_the_sdk_retry_handler(slack: FakeSlack) -> None:
    slack.rate_limit("chat.postMessage", times=1, retry_after=1)
    with pytest.raises(SlackApiError) as limited:
        WebClient(token=slack.bot_token, base_url=slack.api_url).chat_postMessage(channel="C1", text="x")
    assert limited.value.response.status_code == 429 and limited.value.response["error"] == "ratelimited"
    assert limited.value.response.headers["Retry-After"] == "1"

    slack.rate_limit("chat.postMessage", times=1, retry_after=1)
    retrying = WebClient(
        token=slack.bot_token,
        base_url=slack.api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )
    assert retrying.chat_postMessage(channel="C1", text="after the wait")["ok"]
    calls = slack.calls_to("chat.postMessage")
    assert [c.rate_limited for c in calls] == [True, True, False]
    assert calls[2].at - calls[1].at >= 1.0
    assert [m.text for m in slack.messages] == ["after the wait"]


def test_socket_urls_are_single_use_and_start_with_hello(slack: FakeSlack) -> None:
    url = WebClient(base_url=slack.api_url).apps_connections_open(app_token=slack.app_token)["url"]
    assert url.startswith("ws://127.0.0.1:") and "/link/?ticket=" in url
    with connect(url) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "hello" and hello["connection_info"] == {"app_id": "A0001"}
        assert hello["num_connections"] == 1
        ws.send(json.dumps({"envelope_id": "E1", "payload": {"text": "hi"}}))
        assert slack.socket.wait_for_ack("E1").payload == {"text": "hi"}
    with pytest.raises(InvalidStatus) as reused:
        connect(url)
    assert reused.value.response.status_code == 401
    slack.wait_for(lambda s: s.socket.connections == 0)


def test_sign_request_is_what_slack_sdk_verifies() -> None:
    body = json.dumps(event_callback(message_event("hi", ts="1.000001"), event_id="Ev1")).encode()
    headers = sign_request(body, "s3cret")
    assert headers["X-Slack-Signature"].startswith("v0=")
    verifier = SignatureVerifier("s3cret")
    assert verifier.is_valid_request(body, headers)
    assert not SignatureVerifier("wrong").is_valid_request(body, headers)
    assert not verifier.is_valid_request(body + b" ", headers)
    stale = sign_request(body, "s3cret", timestamp=int(time.time()) - 3600)
    assert not verifier.is_valid_request(body, stale)


def _signed(body: bytes | str, secret: str) -> dict[str, str | Sequence[str]]:
    return dict(sign_request(body, secret))


def test_signed_http_requests_pass_bolts_own_verification(slack: FakeSlack) -> None:
    app = App(client=WebClient(token=slack.bot_token, base_url=slack.api_url), signing_secret="s3cret")
    seen: list[dict[str, Any]] = []

    @app.event("message")
    def on_message(event: dict[str, Any]) -> None:
        seen.append(event)

    @app.command("/ask")
    def on_ask(ack: BoltAck, command: dict[str, Any]) -> None:
        ack(f"asked: {command['text']}")

    body = json.dumps(event_callback(message_event("hi", ts="1.000001"), event_id="Ev1"))
    response = app.dispatch(BoltRequest(body=body, headers=_signed(body, "s3cret")))
    assert response.status == 200
    slack.wait_for(lambda _: len(seen) == 1)
    assert seen[0]["text"] == "hi" and seen[0]["channel_type"] == "im"

    form = slash_command_body("/ask", "what is up", user_id="U7")
    response = app.dispatch(BoltRequest(body=form.decode(), headers=_signed(form, "s3cret")))
    assert response.status == 200 and response.body == "asked: what is up"  # ack(text): a plain body

    unsigned = app.dispatch(BoltRequest(body=body, headers=_signed(body, "other")))
    assert unsigned.status == 401


def test_socket_mode_with_an_unmodified_bolt_app() -> None:
    before = set(threading.enumerate())
    with FakeSlack() as slack:
        app = App(client=WebClient(token=slack.bot_token, base_url=slack.api_url), signing_secret="x")

        @app.event("app_mention")
        def on_mention(event: dict[str, Any], client: WebClient) -> None:
            client.chat_postMessage(channel=event["channel"], thread_ts=event["ts"], text="pong")

        @app.event("message")
        def on_message() -> None:  # bolt acks only events some listener matches (else 404, no ack)
            pass

        @app.command("/ask")
        def on_ask(ack: BoltAck, respond: Respond) -> None:
            ack("working on it")
            respond("done")

        handler = SocketModeHandler(app, slack.app_token, web_client=WebClient(base_url=slack.api_url))
        try:
            handler.connect()
            slack.socket.wait_connected()
            assert slack.calls_to("apps.connections.open")[0].headers["authorization"] == "Bearer xapp-test"

            envelope_id = slack.socket.send_event(
                app_mention_event("<@UBOT> ping", ts="1700000001.000100"), event_id="Ev01"
            )
            ack = slack.socket.wait_for_ack(envelope_id)
            assert ack.payload is None
            slack.wait_for(lambda s: [m.text for m in s.messages] == ["pong"])
            reply = slack.messages[0]
            assert (reply.channel, reply.thread_ts) == ("C123", "1700000001.000100")
            thread = WebClient(token=slack.bot_token, base_url=slack.api_url).conversations_replies(
                channel="C123", ts="1700000001.000100"
            )
            assert [m["text"] for m in thread["messages"]] == ["<@UBOT> ping", "pong"]

            command_id = slack.socket.send_slash_command("/ask", "anything")
            assert slack.socket.wait_for_ack(command_id).payload == {"text": "working on it"}
            slack.wait_for(lambda s: len(s.calls_to("response_url")) == 1)
            assert slack.calls_to("response_url")[0].params["text"] == "done"

            # The client pinged on connect and read the pong; the server's pings got answered too.
            session = handler.client.current_session
            assert session is not None and session.last_ping_pong_time is not None

            # Slack's "disconnect" warning: the client fetches a new URL and moves to a new connection.
            slack.socket.send_disconnect()
            slack.wait_for(lambda s: len(s.calls_to("apps.connections.open")) == 2)
            slack.wait_for(
                lambda s: s.socket.connections == 1 and handler.client.current_session is not session
            )
            again = slack.socket.send_event(
                message_event("still there?", ts="1700000002.000100"), event_id="Ev02", retry_attempt=1
            )
            slack.socket.wait_for_ack(again)
        finally:
            handler.close()
        slack.wait_for(lambda s: s.socket.connections == 0)
    left = [
        t for t in threading.enumerate() if t not in before and not t.name.startswith("ThreadPoolExecutor")
    ]
    assert left == []  # bolt's listener pool aside, every thread ended


def test_native_streaming_answers_slack_sdks_chat_stream_as_slack_does() -> None:
    with FakeSlack() as slack:
        client = WebClient(token=slack.bot_token, base_url=slack.api_url)
        stream = client.chat_stream(
            channel="C1",
            thread_ts="1.000001",
            recipient_team_id="T0001",
            recipient_user_id="U1",
            buffer_size=1,
        )
        stream.append(markdown_text="hel")
        stream.append(markdown_text="lo")
        feedback = {"type": "context_actions", "elements": [{"type": "feedback_buttons", "action_id": "f"}]}
        stream.stop(markdown_text="!", blocks=[feedback])
        (message,) = slack.messages
        assert (message.text, message.texts, message.streaming) == (
            "hello!",
            ["hel", "hello", "hello!"],
            False,
        )
        assert message.thread_ts == "1.000001" and message.blocks == [feedback]
        with pytest.raises(SlackApiError, match="message_not_in_streaming_state"):
            client.chat_appendStream(channel="C1", ts=message.ts, markdown_text="more")
        with pytest.raises(SlackApiError, match="missing_recipient_user_id"):
            client.chat_startStream(channel="C1", thread_ts="1.000001")  # outside a DM, Slack needs them
        slack.without_streaming()
        with pytest.raises(SlackApiError, match="unknown_method"):
            client.chat_startStream(channel="D1", thread_ts="1.000001")
