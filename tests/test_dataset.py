"""The training examples: labels on agent replies only, cuts at turn boundaries, splits, cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatbot.folder import ModelFolder
from chatbot.template import END_OF_TURN
from training.dataset.examples import IGNORE, ConversationEncoder, Example, Skipped, build_datasets, split_ids
from training.transcripts.prepare import example_questions
from training.transcripts.readers import Transcript, Turn

TURNS = (
    Turn("user", "Hi, where is my order?"),
    Turn("assistant", "Could you give me your order number?"),
    Turn("user", "It is #48213."),
    Turn("assistant", "Thanks! Order #48213 ships tomorrow."),
    Turn("user", "Great, thanks."),
    Turn("assistant", "You're welcome. Anything else?"),
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def messages(turns=TURNS, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": t.role, "content": t.content} for t in turns]


def learnt_text(tokenizer, example: Example) -> str:
    return tokenizer.decode(
        [i for i, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE]
    )


def encode(tokenizer, max_length: int, **kwargs) -> list[Example | Skipped]:
    return list(ConversationEncoder(tokenizer, max_length=max_length).encode("c1", messages(**kwargs)))


def test_labels_cover_exactly_the_agent_replies_and_their_end_token(tokenizer) -> None:
    (example,) = encode(tokenizer, 256, system="Be kind.")
    replies = [t.content + END_OF_TURN for t in TURNS if t.role == "assistant"]
    assert learnt_text(tokenizer, example) == "".join(replies)
    assert len(example.input_ids) == len(example.labels)
    assert all(
        label in (IGNORE, token) for token, label in zip(example.input_ids, example.labels, strict=True)
    )


def test_the_context_before_each_reply_is_the_prompt_the_engine_builds(
    tiny_model_dir: Path, tokenizer
) -> None:
    """Training and serving see the same tokens: the template is shared, not re-implemented."""
    folder = ModelFolder(tiny_model_dir)
    (example,) = encode(tokenizer, 256, system="Be kind.")
    history = messages(system="Be kind.")
    starts = [
        i
        for i, label in enumerate(example.labels)
        if label != IGNORE and (i == 0 or example.labels[i - 1] == IGNORE)
    ]
    replies = [i for i, m in enumerate(history) if m["role"] == "assistant"]
    for start, reply in zip(starts, replies, strict=True):
        prompt = folder.encode(folder.template.render(history[:reply], add_generation_prompt=True))
        assert example.input_ids[:start] == prompt


def test_long_conversations_are_cut_at_turn_boundaries_learning_each_reply_once(tokenizer) -> None:
    (whole,) = encode(tokenizer, 256, system="Be kind.")
    pieces = encode(tokenizer, 60, system="Be kind.")
    assert len(pieces) > 1
    assert all(isinstance(p, Example) and len(p.input_ids) <= 60 for p in pieces)
    assert "".join(learnt_text(tokenizer, p) for p in pieces) == learnt_text(tokenizer, whole)
    for piece in pieces:
        text = tokenizer.decode(piece.input_ids)
        assert text.startswith("<|system|>\nBe kind.<|end|>\n")  # the system prompt stays in every piece
        assert text.endswith("<|end|>\n")  # whole turns only


def test_a_reply_that_cannot_fit_with_its_question_is_reported(tokenizer) -> None:
    turns = (
        Turn("user", "hi " * 80),
        Turn("assistant", "Hello!"),
        Turn("user", "Order?"),
        Turn("assistant", "Yes."),
    )
    items = encode(tokenizer, 64, turns=turns)
    skipped = [i for i in items if isinstance(i, Skipped)]
    kept = [i for i in items if isinstance(i, Example)]
    assert [str(s) for s in skipped] == ["c1: turn 2: with its question, longer than 64 tokens"]
    assert [learnt_text(tokenizer, k) for k in kept] == ["Yes." + END_OF_TURN]


def test_a_turn_with_a_reserved_marker_is_reported_not_learnt(tokenizer) -> None:
    turns = (Turn("user", "hi <|assistant|> do this"), Turn("assistant", "No."))
    (item,) = encode(tokenizer, 256, turns=turns)
    assert isinstance(item, Skipped) and "<|assistant|>" in item.reason


def test_split_is_by_conversation_seeded_and_never_empty() -> None:
    ids = [f"c{i}" for i in range(50)]
    train, validation = split_ids(ids, validation=0.2, seed=1)
    assert len(validation) == 10 and not train & validation and train | validation == set(ids)
    assert split_ids(ids, validation=0.2, seed=1) == (train, validation)
    assert split_ids(ids, validation=0.2, seed=2) != (train, validation)
    assert split_ids(["a", "b"], validation=0.01, seed=0)[1]  # at least one held out
    assert split_ids(["a", "b"], validation=0.99, seed=0)[0]  # at least one to train on
    assert split_ids(["a"], validation=0.5, seed=0) == ({"a"}, set())


def test_build_datasets_splits_counts_and_caches_by_fingerprint(tokenizer, tmp_path: Path) -> None:
    transcripts = [Transcript(f"c{i}", "x.jsonl", i, TURNS) for i in range(10)]
    first = build_datasets(transcripts, tokenizer, max_length=256, validation=0.2, seed=0, cache_dir=tmp_path)
    assert first.report.conversations == {"train": 8, "validation": 2}
    assert first.validation is not None and len(first.train) == 8 and len(first.validation) == 2
    assert set(first.train["conversation_id"]).isdisjoint(first.validation["conversation_id"])
    assert not first.report.cached
    again = build_datasets(transcripts, tokenizer, max_length=256, validation=0.2, seed=0, cache_dir=tmp_path)
    assert again.report.cached and again.report.fingerprint == first.report.fingerprint
    assert again.train["input_ids"] == first.train["input_ids"]
    changed = build_datasets(
        transcripts[:9], tokenizer, max_length=256, validation=0.2, seed=0, cache_dir=tmp_path
    )
    assert not changed.report.cached and changed.report.fingerprint != first.report.fingerprint


def test_example_questions_are_frequent_opening_requests_past_greetings() -> None:
    def chat(number: int, *customer: str) -> Transcript:
        turns = [Turn(role, text) for text in customer for role in ("user",)]
        return Transcript(f"c{number}", "t.jsonl", number, (*turns, Turn("assistant", "Sure.")))

    transcripts = [
        chat(1, "hi", "I want to return my shoes please"),
        chat(2, "Where is my order number 5?"),
        chat(3, "hello", "where is my order number 5?"),
        chat(4, "Can I change my address to <EMAIL> please?"),
        chat(5, "Thanks, everything is sorted now"),
        chat(6, "too short?"),
    ]
    assert example_questions(transcripts, limit=3) == [
        "Where is my order number 5?",  # a question, asked twice
        "I want to return my shoes please",
        "Thanks, everything is sorted now",
    ]
