"""The engine's metrics, readiness and log lines, on a real tiny model and a real SQLite store."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatbot import (
    Engine,
    GenerationConfig,
    InvalidMessage,
    RateLimited,
    StoreError,
    configure_logging,
    customer_message,
)


@pytest.fixture
def engine(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Engine]:
    with Engine.from_folder(tiny_model_dir, store=tmp_path / "c.db") as opened:
        yield opened


def _value(metrics: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    assert match, f"{name} is not in the metrics"
    return float(match.group(1))


def test_replies_feedback_and_refusals_are_counted(engine: Engine) -> None:
    conversation = engine.start("c1")
    first = engine.reply(conversation.id, "Where is my order?")
    engine.reply(conversation.id, "It is number 12345")
    engine.feedback(first.message_id, "up")
    with pytest.raises(InvalidMessage):
        engine.reply(conversation.id, "   ")
    metrics = engine.metrics.render().decode()
    finished = sum(
        _value(metrics, f'chatbot_replies_total{{finish_reason="{reason}"}}')
        for reason in ("stop", "length")
        if f'finish_reason="{reason}"' in metrics
    )
    assert finished == 2
    assert _value(metrics, "chatbot_first_token_seconds_count") == 2
    assert _value(metrics, "chatbot_reply_seconds_count") == 2
    assert _value(metrics, "chatbot_reply_tokens_total") >= 2
    assert _value(metrics, 'chatbot_feedback_total{rating="up"}') == 1
    assert _value(metrics, 'chatbot_errors_total{kind="InvalidMessage"}') == 1
    assert _value(metrics, "chatbot_active_conversations") == 0
    assert _value(metrics, "chatbot_scheduler_queue_depth") == 0  # the int8 graph behind the scheduler
    assert _value(metrics, "chatbot_handovers_total") == sum(
        1 for m in engine.get("c1").messages if m.role == "assistant" and m.meta["handover"]
    )


def test_ready_until_the_store_stops_answering(engine: Engine) -> None:
    assert engine.ready() == []
    engine.store.close()
    (problem,) = engine.ready()
    assert "store" in problem


@pytest.mark.parametrize("content", [False, True])
def test_a_reply_is_one_json_line_with_its_conversation_and_text_only_when_allowed(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, content: bool
) -> None:
    monkeypatch.setenv("CHATBOT_LOG_FORMAT", "json")
    if content:
        monkeypatch.setenv("CHATBOT_LOG_CONTENT", "1")
    out = io.StringIO()
    handler = configure_logging(stream=out)
    try:
        engine.start("c2")
        reply = engine.reply("c2", "My parcel 4242 is late")
    finally:
        logging.getLogger().removeHandler(handler)
    (line,) = [json.loads(x) for x in out.getvalue().splitlines() if '"reply"' in x]
    assert line["event"] == "reply" and line["conversation_id"] == "c2" and line["level"] == "INFO"
    assert line["message_id"] == reply.message_id and line["finish_reason"] == reply.finish_reason
    assert ("My parcel 4242 is late" in out.getvalue()) is content
    assert (line.get("reply") == reply.text) is content


def test_the_turns_kept_between_replies_are_in_the_metrics(engine: Engine) -> None:
    conversation = engine.start("c5")
    short = GenerationConfig(max_new_tokens=12)  # both turns fit the tiny model's window
    question = "Where is my parcel? I ordered it two weeks ago and it is still not here."
    engine.reply(conversation.id, question, generation=short)
    metrics = engine.metrics.render().decode()
    assert _value(metrics, "chatbot_scheduler_kept_tokens_total") == 0
    assert _value(metrics, "chatbot_scheduler_kept_bytes") > 0  # the first turn, kept for the next
    engine.reply(conversation.id, "It is order 4242.", generation=short)
    metrics = engine.metrics.render().decode()
    assert _value(metrics, "chatbot_scheduler_kept_tokens_total") >= 16


def test_a_store_that_fails_is_counted_and_logged_whichever_call_met_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Channels read and write conversations outside replies too (the web page's history, Slack's
    thread state): a store that fails there is an error the operator's metrics and log see."""
    engine.start("c3")
    monkeypatch.setenv("CHATBOT_LOG_FORMAT", "json")
    out = io.StringIO()
    handler = configure_logging(stream=out)
    engine.store.close()  # every call now raises StoreError
    calls = {
        "get": lambda: engine.get("c3"),
        "start": lambda: engine.start("c4"),
        "ratings": lambda: engine.ratings("c3"),
        "reset": lambda: engine.reset("c3"),
        "update_metadata": lambda: engine.update_metadata("c3", {"handover": True}),
        "claim": lambda: engine.claim("event-1"),
        "feedback": lambda: engine.feedback(1, "up"),
    }
    try:
        for name, call in calls.items():
            with pytest.raises(StoreError, match="closed"):
                call()
                pytest.fail(f"{name} did not raise")
    finally:
        logging.getLogger().removeHandler(handler)
    assert _value(engine.metrics.render().decode(), 'chatbot_errors_total{kind="StoreError"}') == len(calls)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    failed = [line for line in lines if line["event"] == "failed" and line["kind"] == "StoreError"]
    assert len(failed) == len(calls) and all(line["level"] == "ERROR" for line in failed)
    assert {line.get("conversation_id") for line in failed} >= {"c3", "c4"}


def test_an_unknown_log_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATBOT_LOG_FORMAT", "xml")
    with pytest.raises(Exception, match="CHATBOT_LOG_FORMAT='xml' is not a log format"):
        configure_logging()


def test_customers_see_what_they_can_act_on_never_the_stores_error() -> None:
    from plugins.web.page import _notice

    outage = StoreError(
        "the conversation store postgresql+psycopg://bot:***@db.internal/chat failed: refused"
    )
    assert "db.internal" not in customer_message(outage) and "try again" in customer_message(outage)
    assert "db.internal" not in _notice(outage)["content"]
    limited = RateLimited("too many messages from you", hint="wait 3 s and send it again")
    assert customer_message(limited) == str(limited)
