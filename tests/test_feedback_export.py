"""Feedback export: stored conversations and their ratings become training transcripts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatbot import ChatbotError, Engine, EngineConfig, GenerationConfig, SQLStore
from chatbot.feedback import ExportOptions, cut, export_feedback_file, parse_since
from chatbot.types import Message, Role
from training.transcripts.readers import read_transcripts

SYSTEM = "You are the support agent of Example Shop."


def chatbot(*args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "chatbot", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def talk(engine: Engine, conversation_id: str, *turns: str) -> list[int]:
    """Send each user turn and return the message ids of the replies."""
    return [engine.reply(conversation_id, text).message_id for text in turns]


@pytest.fixture
def store_path(tiny_model_dir, tmp_path) -> Path:
    """A SQLite store filled through a real engine, with thumbs up and down.

    - ``liked-then-disliked``: reply 1 up, reply 2 down, reply 3 unrated
    - ``disliked-first``: its only reply down
    - ``unrated``: two replies, no rating
    - ``reset``: reply up, then a reset, then an unrated reply
    - ``changed-mind``: a reply rated down, then up (the latest rating wins)
    - ``silent``: opened, never written to
    """
    path = tmp_path / "conversations.db"
    config = EngineConfig(generation=GenerationConfig(max_new_tokens=6), system_prompt=SYSTEM)
    with Engine.from_folder(tiny_model_dir, store=path, config=config) as engine:
        for name in ("liked-then-disliked", "disliked-first", "unrated", "reset", "changed-mind", "silent"):
            engine.start(name)
        first, second, _ = talk(engine, "liked-then-disliked", "Where is my order?", "It is 12345", "Thanks")
        engine.feedback(first, "up")
        engine.feedback(second, "down")
        (only,) = talk(engine, "disliked-first", "Can I pay with PayPal?")
        engine.feedback(only, -1)
        talk(engine, "unrated", "Do you ship to Canada?", "And to Mexico?")
        (before_reset,) = talk(engine, "reset", "I forgot my password")
        engine.feedback(before_reset, "up")
        engine.reset("reset")
        talk(engine, "reset", "How long does a refund take?")
        (changed,) = talk(engine, "changed-mind", "Is this item available in blue?")
        engine.feedback(changed, "down")
        engine.feedback(changed, "up")
    return path


def read_back(path: Path) -> dict[str, list[tuple[str, str]]]:
    """The exported file read by the training reader: id -> (role, content) turns; no rejections."""
    transcripts, report = read_transcripts([path])
    assert report.rejected == [], report.summary()
    return {t.id: [(turn.role, turn.content) for turn in t.turns] for t in transcripts}


def stored_turns(store_path: Path, conversation_id: str) -> list[tuple[str, str]]:
    with SQLStore.sqlite(store_path) as store:
        return [(m.role, m.content.strip()) for m in store.transcript(conversation_id)]


def test_the_export_reads_back_as_training_data_with_disliked_replies_cut(store_path, tmp_path):
    out = tmp_path / "export" / "feedback.jsonl"
    with SQLStore.sqlite(store_path) as store:
        report = export_feedback_file(store, out, ExportOptions(keep_unfinished=True))
    exported = read_back(out)
    assert sorted(exported) == ["changed-mind", "liked-then-disliked", "reset", "reset/reset-1", "unrated"]
    system = ("system", SYSTEM)
    # cut before the user turn that led to the disliked reply: only the first exchange is left
    assert exported["liked-then-disliked"] == [system, *stored_turns(store_path, "liked-then-disliked")[:2]]
    assert exported["unrated"] == [system, *stored_turns(store_path, "unrated")]
    assert exported["changed-mind"] == [system, *stored_turns(store_path, "changed-mind")]
    reset_turns = stored_turns(store_path, "reset")
    assert exported["reset"] == [system, *reset_turns[:2]]  # each epoch is its own conversation
    assert exported["reset/reset-1"] == [system, *reset_turns[2:]]
    assert (report.conversations, report.exported, report.replies, report.liked) == (6, 5, 6, 3)
    assert report.skipped == {"no reply left": 1, "no turns": 1}
    assert report.left_out == {"disliked": 2, "after a left-out reply": 1}
    assert report.summary() == (
        "exported 5 conversations with 6 replies (3 liked) from 6 stored conversations; "
        "skipped 2 (no reply left 1, no turns 1); left out 3 (disliked 2, after a left-out reply 1)"
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # customers' words: the owner's eyes only
    assert [p.name for p in out.parent.iterdir()] == ["feedback.jsonl"]  # no temporary file left


def test_unfinished_replies_are_left_out_by_default(store_path, tmp_path):
    """The tiny model's random weights rarely reach the end-of-turn token within 6 new tokens."""
    with SQLStore.sqlite(store_path) as store:
        replies = [
            m for cid in store.conversation_ids() for m in store.transcript(cid) if m.role == "assistant"
        ]
        report = export_feedback_file(store, tmp_path / "out.jsonl")
    assert any(m.meta["finish_reason"] != "stop" for m in replies), "expected replies cut at the budget"
    assert report.left_out["unfinished"] >= 1
    assert report.replies + sum(report.left_out.values()) == len(replies)  # every reply accounted for
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == report.exported  # often 0: a random model rarely finishes a reply
    finished = {m.content for m in replies if m.meta["finish_reason"] == "stop"}
    for record in records:
        assert all(m["content"] in finished for m in record["messages"] if m["role"] == "assistant")


def test_only_liked_and_since_select_conversations(store_path, tmp_path):
    with SQLStore.sqlite(store_path) as store:
        options = ExportOptions(only_liked=True, keep_unfinished=True)
        liked = export_feedback_file(store, tmp_path / "liked.jsonl", options)
        future = datetime.now(UTC) + timedelta(days=1)
        later = export_feedback_file(store, tmp_path / "later.jsonl", ExportOptions(since=future))
    assert sorted(read_back(tmp_path / "liked.jsonl")) == ["changed-mind", "liked-then-disliked", "reset"]
    assert liked.skipped == {"no liked reply": 2, "no reply left": 1, "no turns": 1}
    assert later.exported == 0 and later.skipped == {"before --since": 6, "no turns": 1}  # 6 epochs
    assert (tmp_path / "later.jsonl").read_text() == ""


def turn(id: int, role: Role, finish: str = "stop") -> Message:
    meta = {"finish_reason": finish} if role == "assistant" else {}
    return Message(id, "c", id, role, f"turn {id}", datetime.now(UTC), meta)


def test_the_cut_starts_at_every_user_turn_that_led_to_the_left_out_reply():
    turns = [turn(1, "user"), turn(2, "assistant"), turn(3, "user"), turn(4, "user"), turn(5, "assistant")]
    turns += [turn(6, "user"), turn(7, "assistant")]
    kept, left_out = cut(turns, {5: -1})
    assert [t.id for t in kept] == [1, 2] and left_out == {"disliked": 1, "after a left-out reply": 1}
    kept, left_out = cut(turns, {2: -1, 5: 1})
    assert kept == () and left_out == {"disliked": 1, "after a left-out reply": 2}
    kept, left_out = cut([*turns, turn(8, "user")], {})
    assert [t.id for t in kept] == [1, 2, 3, 4, 5, 6, 7] and not left_out  # an unanswered last turn goes
    cancelled = [turn(1, "user"), turn(2, "assistant", finish="cancelled")]
    assert cut(cancelled, {}) == ((), {"unfinished": 1})
    assert [t.id for t in cut(cancelled, {}, keep_unfinished=True)[0]] == [1, 2]


def test_every_epoch_is_its_own_conversation(tiny_model_dir, tmp_path):
    config = EngineConfig(generation=GenerationConfig(max_new_tokens=4))
    with Engine.from_folder(tiny_model_dir, store=tmp_path / "c.db", config=config) as engine:
        engine.start("c")
        for text in ("one", "two", "three"):
            talk(engine, "c", text)
            engine.reset("c")
        talk(engine, "c", "four")
        options = ExportOptions(keep_unfinished=True)
        report = export_feedback_file(engine.store, tmp_path / "out.jsonl", options)
    assert report.exported == 4


def test_the_export_command(store_path, tmp_path):
    out = tmp_path / "feedback.jsonl"
    result = chatbot("feedback", "export", "--store", str(store_path), "--out", str(out), "--keep-unfinished")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "exported 5 conversations with 6 replies (3 liked) from 6 stored conversations" in result.stderr
    assert len(read_back(out)) == 5
    env = {"CHATBOT_STORE": str(store_path)}
    piped = chatbot("feedback", "export", "--only-liked", "--keep-unfinished", env=env)
    assert piped.returncode == 0, piped.stderr
    records = [json.loads(line) for line in piped.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == ["changed-mind", "liked-then-disliked", "reset"]
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)


def test_export_errors_say_what_to_do(tmp_path):
    missing = chatbot("feedback", "export", "--store", str(tmp_path / "nowhere.db"))
    assert missing.returncode == 1 and "no conversation store at" in missing.stderr
    assert "CHATBOT_STORE" in missing.stderr and not (tmp_path / "nowhere.db").exists()
    bad_date = chatbot("feedback", "export", "--store", str(tmp_path / "x.db"), "--since", "last tuesday")
    assert bad_date.returncode == 1 and "is not a date" in bad_date.stderr
    assert "Traceback" not in missing.stderr + bad_date.stderr
    assert parse_since("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)
    assert parse_since("2025-01-31T12:00Z") == datetime(2025, 1, 31, 12, tzinfo=UTC)


def test_a_staff_members_answers_are_exported_as_the_agents_and_counted(tiny_model_dir, tmp_path):
    """What a person wrote after taking a conversation over is the best training data a team has:
    the customer's messages to them and their answers are exported, and counted apart."""
    config = EngineConfig(generation=GenerationConfig(max_new_tokens=4), handover_below=None)
    store = tmp_path / "c.db"
    with Engine.from_folder(tiny_model_dir, store=store, config=config) as engine:
        conversation = engine.start("taken")
        engine.request_person(conversation.id)  # the customer asked for a person straight away
        engine.take(conversation.id, "ada")
        with pytest.raises(ChatbotError, match="a person from the support team"):
            engine.reply(conversation.id, "My parcel is lost")
        engine.person_reply(conversation.id, "ada", "I'm Ada: I have sent a new parcel today.")
    with SQLStore.sqlite(store) as reopened:
        report = export_feedback_file(reopened, tmp_path / "out.jsonl")
    assert read_back(tmp_path / "out.jsonl") == {
        "taken": [("user", "My parcel is lost"), ("assistant", "I'm Ada: I have sent a new parcel today.")]
    }
    assert (report.replies, report.by_people, report.left_out) == (1, 1, {})
    assert "(0 liked, 1 written by people)" in report.summary()
