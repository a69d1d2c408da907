"""Fitting the history into the context window: whole turns dropped, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chatbot import ChatbotError, MessageTooLong, ModelFolder
from chatbot.prompt import build_prompt, turn_starts
from chatbot.types import Message

NOW = datetime.now(UTC)


def history(*pairs: tuple[str, str]) -> list[Message]:
    return [Message(i, "c", i, role, text, NOW) for i, (role, text) in enumerate(pairs)]  # type: ignore[arg-type]


def chat(turns: int, words: int = 12) -> list[Message]:
    pairs: list[tuple[str, str]] = []
    for i in range(turns):
        pairs.append(("user", f"question {i} " + "where is my parcel " * words))
        pairs.append(("assistant", f"answer {i} " + "it ships tomorrow " * words))
    pairs.append(("user", "and now?"))
    return history(*pairs)


@pytest.fixture(scope="module")
def folder(tiny_model_dir) -> ModelFolder:
    return ModelFolder(tiny_model_dir)


def test_a_short_conversation_is_kept_whole(folder):
    prompt = build_prompt(folder, chat(1, words=1), system_prompt="Be brief.", max_new_tokens=32)
    assert prompt.dropped_turns == 0
    assert prompt.text.startswith("<|system|>\nBe brief.<|end|>\n<|user|>\nquestion 0")
    assert prompt.text.endswith("<|user|>\nand now?<|end|>\n<|assistant|>\n")
    assert list(prompt.token_ids) == folder.encode(prompt.text)


def test_oldest_whole_turns_go_first_and_the_most_history_that_fits_stays(folder):
    messages = chat(12, words=2)
    budget = 64
    window = folder.spec.n_positions - budget
    prompt = build_prompt(folder, messages, system_prompt="You are the shop's agent.", max_new_tokens=budget)
    assert prompt.dropped_turns > 0
    assert len(prompt.token_ids) <= window
    assert prompt.text.startswith("<|system|>\nYou are the shop's agent.<|end|>\n<|user|>\nquestion ")
    assert f"question {prompt.dropped_turns} " in prompt.text
    assert f"question {prompt.dropped_turns - 1} " not in prompt.text
    one_more = build_prompt(
        folder, messages[2:], system_prompt="You are the shop's agent.", max_new_tokens=budget
    )
    assert one_more.dropped_turns == prompt.dropped_turns - 1  # dropping less would not fit


def test_turns_start_at_user_messages():
    messages = history(("assistant", "Hi, how can I help?"), ("user", "a"), ("assistant", "b"), ("user", "c"))
    assert turn_starts(messages) == [0, 1, 3]


def test_a_message_that_cannot_fit_alone_is_refused(folder):
    messages = history(("user", "refund " * 400))
    with pytest.raises(MessageTooLong, match="shorten"):
        build_prompt(folder, messages, system_prompt=None, max_new_tokens=32)


def test_the_system_prompt_is_never_dropped(folder):
    long_system = "Always answer politely. " * 6
    prompt = build_prompt(folder, chat(8, words=2), system_prompt=long_system, max_new_tokens=32)
    assert prompt.text.startswith("<|system|>\n" + long_system)
    assert prompt.dropped_turns > 0
    assert len(prompt.token_ids) + 32 <= folder.spec.n_positions


def test_a_reply_budget_as_big_as_the_window_is_a_configuration_error(folder):
    with pytest.raises(ChatbotError, match="max_new_tokens"):
        build_prompt(folder, chat(1), system_prompt=None, max_new_tokens=folder.spec.n_positions)


def test_the_prompt_says_how_many_of_its_tokens_are_the_system_prompts_turn(folder):
    system = "You are the shop's agent. Answer in one sentence."
    prompt = build_prompt(folder, chat(2, words=1), system_prompt=system, max_new_tokens=32)
    head = folder.encode(
        folder.template.render([{"role": "system", "content": system}], add_generation_prompt=False)
    )
    assert prompt.system_tokens == len(head) > 0
    assert list(prompt.token_ids[: len(head)]) == head  # every conversation with it starts so
    assert build_prompt(folder, chat(2, words=1), system_prompt=None, max_new_tokens=32).system_tokens == 0
