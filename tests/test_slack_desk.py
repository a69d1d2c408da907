"""People in the loop, Slack's half, run for real against tests/slack_fake.py: a handed-over
thread keeps everyone's words (staff as a person's replies, customers as theirs), web handovers
get a thread at the support desk where staff answer, replies stream natively and carry feedback
buttons whose clicks are stored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from slack_fake import FakeSlack, app_mention_event, event_callback, message_event, slash_command_body
from test_slack import APP_TOKEN, BOT_TOKEN, NEVER, SECRET, Bot, environment, finished, new_ts, replies

from chatbot import Engine, EngineConfig, GenerationConfig, SQLStore, WithAPerson
from plugins.slack.bot import conversation_key

DESK = "CDESK"
QUIET = EngineConfig(generation=GenerationConfig(max_new_tokens=6), handover_below=None)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as fake:
        yield fake


def click(bot: Bot, payload: dict[str, Any]) -> None:
    """Post a block action as Slack does: a signed form with the JSON in ``payload``."""
    status, _ = bot.post(urlencode({"payload": json.dumps(payload)}).encode())
    assert status == 200


def in_thread(text: str, channel: str, thread: str, user: str) -> dict[str, Any]:
    return message_event(
        text, channel=channel, ts=new_ts(), thread_ts=thread, channel_type="channel", user=user
    )


def stored(store: Path, conversation_id: str) -> Any:
    with SQLStore(f"sqlite:///{store}") as opened:
        return opened.get_conversation(conversation_id)


def ephemerals(slack: FakeSlack, user: str) -> list[str]:
    return [
        str(c.params.get("text")) for c in slack.calls_to("chat.postEphemeral") if c.params["user"] == user
    ]


# -- native streaming and feedback ---------------------------------------------------------------


def test_a_reply_streams_natively_and_its_feedback_buttons_are_stored(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    running = Bot(tiny_model_dir, tmp_path / "c.db", environment(slack), *NEVER, "--update-interval", "0")
    try:
        thread = new_ts()
        mention = app_mention_event("<@UBOT> where is my parcel?", channel="C100", ts=thread)
        running.post(event_callback(mention, event_id="EvS1"))
        (reply,) = finished(slack, "C100")
        methods = [c.method for c in slack.calls if c.method.startswith("chat.")]
        assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream"
        assert "chat.appendStream" in methods and "chat.postMessage" not in methods
        started = slack.calls_to("chat.startStream")[0].params
        assert (started["recipient_user_id"], started["recipient_team_id"]) == ("U123", "T0001")
        key = conversation_key("T0001", "C100", thread)
        answer = stored(running.store, key).messages[-1]
        assert reply.text == answer.content.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        (block,) = reply.blocks or []
        assert block["type"] == "context_actions" and block["elements"][0]["type"] == "feedback_buttons"

        click(running, slack.action_payload("C100", reply.ts, "chatbot_feedback", button="negative_button"))
        with SQLStore(f"sqlite:///{running.store}") as store:
            slack.wait_for(lambda _: len(store.feedback(key)) == 1, timeout=30)
            (rated,) = store.feedback(key)
        assert (rated.message_id, rated.rating) == (answer.id, -1)
        click(running, slack.action_payload("C100", reply.ts, "chatbot_feedback", button="positive_button"))
        with SQLStore(f"sqlite:///{running.store}") as store:
            slack.wait_for(lambda _: store.feedback(key)[-1].rating == 1, timeout=30)
    finally:
        assert running.stop() == 0
    assert SECRET not in running.output() and BOT_TOKEN not in running.output()


def test_without_native_streaming_the_edited_reply_has_the_feedback_buttons_too(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    slack.fail("chat.startStream", "not_allowed")
    env = environment(slack, SLACK_APP_TOKEN=APP_TOKEN)  # over Socket Mode this time
    del env["SLACK_SIGNING_SECRET"]
    running = Bot(tiny_model_dir, tmp_path / "c.db", env, *NEVER)
    try:
        ts = new_ts()
        slack.socket.send_event(message_event("hello", channel="D200", ts=ts), event_id="EvS2")
        (reply,) = finished(slack, "D200")
        assert reply.texts[0] == "…" and [b["type"] for b in reply.blocks or []] == [
            "section",
            "context_actions",
        ]
        envelope = slack.socket.send_interactive(slack.action_payload("D200", reply.ts, "chatbot_feedback"))
        slack.socket.wait_for_ack(envelope, timeout=3)
        key = conversation_key("T0001", "D200", ts)
        with SQLStore(f"sqlite:///{running.store}") as store:
            slack.wait_for(lambda _: [f.rating for f in store.feedback(key)] == [1], timeout=30)
    finally:
        assert running.stop() == 0


# -- a Slack thread with a person in it ------------------------------------------------------------


def test_a_handed_over_thread_keeps_the_customers_and_the_staffs_words(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    slack.add_group("S0HELP", ["UBEN"])
    env = environment(slack, SLACK_HANDOVER_MENTION="<!subteam^S0HELP>", SLACK_STAFF_USERS="UADA")
    running = Bot(tiny_model_dir, tmp_path / "c.db", env)  # the tiny model is unsure: it asks for a person
    try:
        thread = new_ts()
        running.post(
            event_callback(app_mention_event("<@UBOT> help", channel="C300", ts=thread), event_id="E1")
        )
        finished(slack, "C300")
        key = conversation_key("T0001", "C300", thread)
        said = [
            ("U123", "hello?? anyone"),  # the customer, while a person is on the way
            ("UBEN", "Hi, I'm Ben from support."),  # a member of the handover group: takes it
            ("U123", "thanks Ben"),
            ("UEVE", "same problem here"),  # not staff: a customer too
        ]
        for number, (user, text) in enumerate(said):
            running.post(event_callback(in_thread(text, "C300", thread, user), event_id=f"E2{number}"))
            slack.wait_for(lambda _, n=3 + number: len(stored(running.store, key).messages) == n, timeout=30)
        # staff, but Ben has it: told so, not stored
        running.post(event_callback(in_thread("I can help as well", "C300", thread, "UADA"), event_id="E25"))
        slack.wait_for(lambda s: ephemerals(s, "UADA"), timeout=30)
        assert "slack:UBEN has conversation" in ephemerals(slack, "UADA")[0]
        turns = stored(running.store, key).messages[2:]
        assert [(m.role, m.content) for m in turns] == [
            ("user", "hello?? anyone"),
            ("assistant", "Hi, I'm Ben from support."),
            ("user", "thanks Ben"),
            ("user", "same problem here"),
        ]
        assert turns[0].meta == {"to": "person"} and turns[2].meta == {"to": "person"}
        assert (turns[1].meta["author"], turns[1].meta["staff"]) == ("person", "slack:UBEN")
        assert len(replies(slack, "C300")) == 1  # the bot stayed quiet

        link = f"https://fake.slack.com/archives/C300/p{thread.replace('.', '')}"
        _, text = running.post(slash_command_body("/chatbot", f"resume {link}", user_id="UBEN"))
        assert "answer in that thread again" in text
        running.post(event_callback(in_thread("and now?", "C300", thread, "U123"), event_id="E3"))
        finished(slack, "C300", 2)  # the bot answers again
    finally:
        assert running.stop() == 0


# -- the support desk: web handovers in a Slack channel --------------------------------------------


def test_a_web_handover_gets_one_thread_at_the_desk_where_staff_answer_the_customer(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    store = tmp_path / "c.db"
    env = environment(
        slack, SLACK_SUPPORT_CHANNEL=DESK, SLACK_STAFF_USERS="UADA", SLACK_HANDOVER_MENTION="<@UADA>"
    )
    first = Bot(tiny_model_dir, store, env, *NEVER)
    second = Bot(tiny_model_dir, store, env, *NEVER)  # two replicas on one store
    try:
        with Engine.from_folder(tiny_model_dir, store=store, config=QUIET) as web:
            customer = web.start(metadata={"channel": "web"})
            web.reply(customer.id, "My parcel never came")
            web.request_person(customer.id, "asked")

            slack.wait_for(lambda s: [m for m in replies(s, DESK) if m.thread_ts is None], timeout=30)
            time.sleep(5)  # both replicas have read the queue twice since
            (root,) = [m for m in replies(slack, DESK) if m.thread_ts is None]  # posted once
            assert "<@UADA>" in root.text and "asked for a person" in root.text and "web chat" in root.text
            history = [m.text for m in replies(slack, DESK) if m.thread_ts == root.ts]
            assert len(history) == 1 and "*Customer:* My parcel never came" in history[0]
            assert web.get(customer.id).metadata["slack_desk"]["thread_ts"] == root.ts

            note = in_thread("I think this is the lost-parcel case", DESK, root.ts, "UADA")
            second.post(event_callback(note, event_id="D1"))  # an internal note: stays in Slack
            sent = in_thread("!reply Hello, I'm Ada. Your parcel is on its way.", DESK, root.ts, "UADA")
            second.post(event_callback(sent, event_id="D2"))
            slack.wait_for(lambda s: s.calls_to("reactions.add"), timeout=30)
            answer = web.get(customer.id).messages[-1]
            assert (answer.role, answer.content) == (
                "assistant",
                "Hello, I'm Ada. Your parcel is on its way.",
            )
            assert (answer.meta["author"], answer.meta["staff"]) == ("person", "slack:UADA")
            assert not any("lost-parcel" in m.content for m in web.get(customer.id).messages)
            stranger = in_thread("!reply let me try", DESK, root.ts, "UEVE")  # not on the team
            first.post(event_callback(stranger, event_id="D3"))
            slack.wait_for(lambda s: ephemerals(s, "UEVE"), timeout=30)
            assert web.get(customer.id).messages[-1].id == answer.id

            with pytest.raises(WithAPerson):
                web.stream(customer.id, "Thank you! When will it arrive?")
            slack.wait_for(
                lambda s: any("When will it arrive" in m.text for m in replies(s, DESK)), timeout=30
            )
            time.sleep(5)
            copies = [m for m in replies(slack, DESK) if "When will it arrive" in m.text]
            assert len(copies) == 1 and copies[0].thread_ts == root.ts  # copied once, into the thread

            click(first, slack.action_payload(DESK, root.ts, "chatbot_hand_back", user="UADA"))
            slack.wait_for(lambda s: any("handed the conversation back" in m.text for m in replies(s, DESK)))
            handover = web.handover(customer.id)
            assert handover is not None and handover.state == "returned"
            assert web.reply(customer.id, "ok").text is not None  # the bot answers the customer again
    finally:
        assert first.stop() == 0 and second.stop() == 0
    for running in (first, second):
        assert SECRET not in running.output() and BOT_TOKEN not in running.output()


def test_resume_works_with_a_link_to_a_desk_thread(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    store = tmp_path / "c.db"
    running = Bot(tiny_model_dir, store, environment(slack, SLACK_SUPPORT_CHANNEL=DESK), *NEVER)
    try:
        with Engine.from_folder(tiny_model_dir, store=store, config=QUIET) as web:
            customer = web.start(metadata={"channel": "web"})
            web.request_person(customer.id, "flagged")
            slack.wait_for(lambda s: [m for m in replies(s, DESK) if m.thread_ts is None], timeout=30)
            (root,) = [m for m in replies(slack, DESK) if m.thread_ts is None]
            assert "unsure" in root.text
            link = f"https://fake.slack.com/archives/{DESK}/p{root.ts.replace('.', '')}"
            _, text = running.post(slash_command_body("/chatbot", f"resume {link}", user_id="UADA"))
            assert "answer in that thread again" in text
            handover = web.handover(customer.id)
            assert handover is not None and handover.state == "returned"
    finally:
        assert running.stop() == 0


def test_staff_settings_that_are_not_slack_ids_stop_start_up(
    tiny_model_dir: Path, slack: FakeSlack, tmp_path: Path
) -> None:
    from test_slack import start_once

    for name, value in (("SLACK_STAFF_USERS", "UADA,ada@example.com"), ("SLACK_SUPPORT_CHANNEL", "#support")):
        result = start_once(tiny_model_dir, tmp_path / "c.db", environment(slack, **{name: value}))
        assert result.returncode == 1 and name in result.stderr and "Copy ID" in result.stderr


def test_the_staff_groups_members_are_read_again_after_their_ttl(slack: FakeSlack) -> None:
    from plugins.slack.bot import web_client
    from plugins.slack.staff import Staff

    now = [0.0]
    slack.add_group("S0HELP", ["UBEN"])
    staff = Staff(
        web_client(BOT_TOKEN, slack.api_url), users=frozenset({"UADA"}), group="S0HELP", clock=lambda: now[0]
    )
    assert "UADA" in staff and "UBEN" in staff and "UEVE" not in staff
    slack.add_group("S0HELP", ["UEVE"])
    assert "UBEN" in staff and "UEVE" not in staff  # within the TTL: no second call
    assert len(slack.calls_to("usergroups.users.list")) == 1
    now[0] = staff.ttl_s
    assert "UEVE" in staff and "UBEN" not in staff
    slack.fail("usergroups.users.list", "missing_scope")
    now[0] = 2 * staff.ttl_s
    assert "UEVE" in staff  # Slack refused: the members last known stay
