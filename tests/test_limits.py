"""Limits that keep one visitor from starving the rest, on a real engine (tiny model, SQLite)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatbot import Busy, Engine, EngineConfig, GenerationConfig, RateLimited
from chatbot.limits import RateLimiter

SHORT = GenerationConfig(max_new_tokens=4)


def _engine(model: Path, tmp_path: Path, **limits: float | int | None) -> Engine:
    config = EngineConfig(generation=SHORT, **limits)  # type: ignore[arg-type]
    return Engine.from_folder(model, store=tmp_path / "c.db", config=config)


@pytest.fixture
def engine(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Engine]:
    with _engine(tiny_model_dir, tmp_path, conversation_rate=3, client_rate=5) as opened:
        yield opened


def _user_turns(engine: Engine, conversation_id: str) -> int:
    return sum(1 for m in engine.get(conversation_id).messages if m.role == "user")


def test_a_conversation_over_its_rate_is_refused_with_when_to_retry_and_nothing_is_stored(
    engine: Engine,
) -> None:
    engine.start("c1")
    for i in range(3):
        engine.reply("c1", f"message {i}")
    with pytest.raises(RateLimited, match="this conversation: the limit is 3 a minute") as refused:
        engine.reply("c1", "one too many")
    assert refused.value.retry_after_s > 0 and "wait" in str(refused.value.hint)
    assert _user_turns(engine, "c1") == 3
    assert re.search(
        r'^chatbot_errors_total\{kind="RateLimited"\} 1\.0$', engine.metrics.render().decode(), re.M
    )


def test_a_client_over_its_rate_is_refused_across_conversations_and_others_go_on(engine: Engine) -> None:
    for i in range(5):
        engine.start(f"k{i}")
        engine.reply(f"k{i}", "hello", client="web:10.0.0.7")
    engine.start("k5")
    with pytest.raises(RateLimited, match="from you"):
        engine.reply("k5", "hello", client="web:10.0.0.7")
    engine.reply("k5", "hello", client="web:10.0.0.8")  # somebody else
    assert _user_turns(engine, "k5") == 1


def test_replies_over_the_concurrency_cap_wait_in_line_then_are_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with _engine(tiny_model_dir, tmp_path, max_concurrent_replies=1, queue_timeout_s=0.3) as engine:
        engine.start("first")
        engine.start("second")
        long = engine.stream("first", "tell me everything", generation=GenerationConfig(max_new_tokens=60))
        next(iter(long))  # the first reply holds the only slot while it is read
        waiting = engine.stream("second", "am I next?")
        with pytest.raises(Busy, match=r"1 reply slots stayed busy for 0\.3 s"):
            next(iter(waiting))
        assert _user_turns(engine, "second") == 0  # refused before anything was stored
        long.close()
        assert engine.reply("second", "now?").text is not None  # the slot is free again


def test_a_bucket_refills_with_time() -> None:
    limiter = RateLimiter(600, what="you")  # 10 a second, bursts of 600
    for _ in range(600):
        limiter.check("k")
    with pytest.raises(RateLimited) as refused:
        limiter.check("k")
    assert 0 < refused.value.retry_after_s <= 0.1
    time.sleep(0.15)
    limiter.check("k")  # one token came back
    limiter.check("other")  # every key has its own bucket
    with pytest.raises(ValueError):
        RateLimiter(0, what="you")
