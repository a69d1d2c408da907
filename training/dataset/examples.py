"""Turning transcripts into training examples: render, tokenize, mask, cut, split, cache.

Each conversation is rendered with the model's own chat template (the one the engine uses
to build prompts), tokenized once, and labelled for the causal language-model loss on the
agent's words only: the labels are ``-100`` everywhere except the tokens the model must learn
to generate, which are each assistant turn's content *and its end-of-turn token* (that token
is what stops a reply at serving time). The role header ``<|assistant|>\\n`` is part of the
prompt, not of the reply, so it is not learnt, and neither are the customer's words.

A conversation longer than the context window is cut at turn boundaries into several
examples; every assistant turn is learnt exactly once, with as much earlier conversation as
fits before it (the system prompt is kept in every piece, as the engine keeps it). A single
customer turn and reply that cannot fit even alone are reported, never silently dropped.

Example::

    from training.dataset.examples import build_datasets
    data = build_datasets(transcripts, tokenizer, max_length=256, validation=0.1, seed=0)
    data.train, data.validation  # datasets.Dataset with input_ids / labels
    print(data.report.summary())
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatbot.errors import ChatbotError
from chatbot.paths import write_text_atomically
from chatbot.template import END_OF_TURN, ChatTemplate

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from training.transcripts.readers import Transcript

IGNORE = -100  # the label PyTorch's cross entropy skips
CACHE_FORMAT = 1  # bump when the encoding below changes, so old caches are not reused


class DatasetError(ChatbotError):
    """Transcripts that cannot become a training set (none left, a broken template)."""


@dataclass(frozen=True)
class Example:
    """One training example: token ids and labels of the same length."""

    conversation_id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def learnt_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass(frozen=True)
class Skipped:
    """An assistant turn that was not learnt, and why (reported with the conversation id)."""

    conversation_id: str
    turn: int
    reason: str

    def __str__(self) -> str:
        return f"{self.conversation_id}: turn {self.turn}: {self.reason}"


@dataclass
class DatasetReport:
    """What went into training: conversations and examples per split, learnt tokens, skips."""

    fingerprint: str = ""
    conversations: dict[str, int] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    learnt_tokens: dict[str, int] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    cached: bool = False

    def summary(self) -> str:
        parts = [
            f"{split}: {self.conversations.get(split, 0)} conversations, {self.examples.get(split, 0)} "
            f"examples, {self.tokens.get(split, 0)} tokens ({self.learnt_tokens.get(split, 0)} learnt)"
            for split in ("train", "validation")
        ]
        lines = ["; ".join(parts) + (" [from cache]" if self.cached else "")]
        if self.skipped:
            lines.append(f"{len(self.skipped)} agent turns not learnt:")
            lines.extend(f"  {skip}" for skip in self.skipped)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "conversations": self.conversations,
            "examples": self.examples,
            "tokens": self.tokens,
            "learnt_tokens": self.learnt_tokens,
            "skipped": [str(skip) for skip in self.skipped],
        }


@dataclass
class Datasets:
    """The train and validation splits and the report that describes them."""

    train: Dataset
    validation: Dataset | None
    report: DatasetReport


def messages_of(transcript: Transcript, system_prompt: str | None = None) -> list[dict[str, str]]:
    """A transcript as chat messages, with ``system_prompt`` first unless it has its own."""
    messages = [{"role": turn.role, "content": turn.content} for turn in transcript.turns]
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


class ConversationEncoder:
    """Render and tokenize conversations, with labels on the assistant's replies only.

    ``tokenizer`` is a transformers fast tokenizer whose ``chat_template`` is the model's.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> None:
        source = tokenizer.chat_template
        if not isinstance(source, str):
            raise DatasetError("the tokenizer has no chat template", hint="set tokenizer.chat_template")
        special = {
            key: value
            for key in ("bos_token", "eos_token", "pad_token", "unk_token")
            if isinstance(value := getattr(tokenizer, key, None), str)
        }
        self.template = ChatTemplate(source, special_tokens=special)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self.markers = tuple(tokenizer.all_special_tokens)

    def encode(
        self, conversation_id: str, messages: Sequence[Mapping[str, str]]
    ) -> Iterator[Example | Skipped]:
        """The examples of one conversation (several when it is longer than ``max_length``)."""
        for number, message in enumerate(messages):
            if marker := next((m for m in self.markers if m in message["content"]), None):
                yield Skipped(conversation_id, number + 1, f"contains the reserved marker {marker}")
                return
        text, turns, replies = self._render(messages)
        ids, starts = self._tokenize(text)
        labels = self._labels(ids, starts, replies)
        bounds = [_token_at(starts, char) for char in turns] + [len(ids)]
        yield from self._cut(conversation_id, messages, ids, labels, bounds)

    def _tokenize(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and where each starts in ``text``.

        The fast tokenizer's backend is called directly: the transformers wrapper would warn that
        a whole conversation is longer than the context, which is why it is cut afterwards.
        """
        encoding = self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.ids), [start for start, _ in encoding.offsets]

    def _render(self, messages: Sequence[Mapping[str, str]]) -> tuple[str, list[int], list[tuple[int, int]]]:
        """The full text, where each turn starts, and the character span of each reply."""
        text = self.template.render(messages, add_generation_prompt=False)
        turns: list[int] = []
        replies: list[tuple[int, int]] = []
        for index, message in enumerate(messages):
            before = self.template.render(messages[:index], add_generation_prompt=False) if index else ""
            turns.append(self._prefix_length(text, before))
            if message["role"] == "assistant":
                prompt = self.template.render(messages[:index], add_generation_prompt=True)
                start = self._prefix_length(text, prompt)
                end = text.find(END_OF_TURN, start)
                if end < 0:
                    raise DatasetError(f"the chat template does not close a reply with {END_OF_TURN}")
                replies.append((start, end + len(END_OF_TURN)))
        return text, turns, replies

    @staticmethod
    def _prefix_length(text: str, prefix: str) -> int:
        if not text.startswith(prefix):
            raise DatasetError(
                "the chat template renders a conversation differently from its beginning",
                hint="training needs a template where each turn only appends text",
            )
        return len(prefix)

    def _labels(self, ids: list[int], starts: list[int], replies: list[tuple[int, int]]) -> list[int]:
        labels = [IGNORE] * len(ids)
        for start, end in replies:
            for index in range(_token_at(starts, start), _token_at(starts, end)):
                labels[index] = ids[index]
        return labels

    def _cut(
        self,
        conversation_id: str,
        messages: Sequence[Mapping[str, str]],
        ids: list[int],
        labels: list[int],
        bounds: list[int],
    ) -> Iterator[Example | Skipped]:
        """Windows of whole turns that fit, each learning the replies not learnt before.

        For the next reply not learnt yet, the window starts at the earliest turn (a customer
        message, or the first message) from which that reply fits, and takes as many of the
        following messages as fit; replies inside it that an earlier window learnt are masked.
        """
        first = 1 if messages and messages[0]["role"] == "system" else 0
        head = bounds[first]  # the system prompt, repeated in every window
        starts = [i for i in range(first, len(messages)) if i == first or messages[i]["role"] == "user"]
        replies = [i for i in range(first, len(messages)) if messages[i]["role"] == "assistant"]
        learnt = first
        for reply in replies:
            if reply < learnt:
                continue
            fits = [
                s for s in starts if s <= reply and head + bounds[reply + 1] - bounds[s] <= self.max_length
            ]
            if not fits:
                yield Skipped(
                    conversation_id, reply + 1, f"with its question, longer than {self.max_length} tokens"
                )
                learnt = reply + 1
                continue
            start, end = fits[0], reply + 1
            while end < len(messages) and head + bounds[end + 1] - bounds[start] <= self.max_length:
                end += 1
            window = ids[:head] + ids[bounds[start] : bounds[end]]
            masked = [IGNORE] * (head + bounds[reply] - bounds[start])
            yield Example(conversation_id, window, masked + labels[bounds[reply] : bounds[end]])
            learnt = end


def _token_at(starts: list[int], char: int) -> int:
    """The index of the first token that starts at or after ``char``."""
    low, high = 0, len(starts)
    while low < high:
        middle = (low + high) // 2
        if starts[middle] < char:
            low = middle + 1
        else:
            high = middle
    return low


def fingerprint(transcripts: Sequence[Transcript], *parts: Any) -> str:
    """A short hash of the conversations (in order) and anything else the result depends on."""
    digest = hashlib.sha256()
    for transcript in transcripts:
        digest.update(json.dumps([transcript.id, [(t.role, t.content) for t in transcript.turns]]).encode())
        digest.update(b"\n")
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def split_ids(ids: Sequence[str], *, validation: float, seed: int) -> tuple[set[str], set[str]]:
    """Conversation ids for training and validation: a seeded shuffle, cut at ``validation``.

    With ``validation > 0`` and at least two conversations, validation gets at least one and
    training keeps at least one.
    """
    unique = sorted(set(ids))
    random.Random(seed).shuffle(unique)
    count = round(len(unique) * validation)
    if validation > 0 and len(unique) >= 2:
        count = min(max(count, 1), len(unique) - 1)
    return set(unique[count:]), set(unique[:count])


def build_datasets(
    transcripts: Sequence[Transcript],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    validation: float = 0.1,
    seed: int = 0,
    system_prompt: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Datasets:
    """Encode ``transcripts`` into train and validation datasets (see the module docstring).

    With ``cache_dir``, the encoded datasets are saved under their fingerprint (the data, the
    tokenizer, the template and every option) and loaded from there the next time.
    """
    from datasets import Dataset, load_from_disk

    if not transcripts:
        raise DatasetError("there are no conversations to train on", hint="check the --data paths")
    key = fingerprint(
        transcripts,
        CACHE_FORMAT,
        _tokenizer_hash(tokenizer),
        max_length,
        validation,
        seed,
        system_prompt,
    )
    cached = Path(cache_dir) / key if cache_dir is not None else None
    if cached is not None and (cached / "report.json").is_file():
        return _load_cached(cached, load_from_disk)
    train_ids, _ = split_ids([t.id for t in transcripts], validation=validation, seed=seed)
    encoder = ConversationEncoder(tokenizer, max_length=max_length)
    report = DatasetReport(fingerprint=key)
    rows: dict[str, list[Example]] = {"train": [], "validation": []}
    counted: dict[str, set[str]] = {"train": set(), "validation": set()}
    for transcript in transcripts:
        split = "train" if transcript.id in train_ids else "validation"
        for item in encoder.encode(transcript.id, messages_of(transcript, system_prompt)):
            if isinstance(item, Skipped):
                report.skipped.append(item)
            else:
                rows[split].append(item)
                counted[split].add(transcript.id)
    if not rows["train"]:
        raise DatasetError(
            "no training example is left after encoding",
            hint="every agent turn was skipped; see the report for why",
        )
    splits = {name: _to_dataset(Dataset, examples) for name, examples in rows.items() if examples}
    for name, examples in rows.items():
        report.conversations[name] = len(counted[name])
        report.examples[name] = len(examples)
        report.tokens[name] = sum(len(e.input_ids) for e in examples)
        report.learnt_tokens[name] = sum(e.learnt_tokens for e in examples)
    if cached is not None:
        _save_cached(cached, splits, report)
    return Datasets(splits["train"], splits.get("validation"), report)


def _to_dataset(dataset_class: Any, examples: list[Example]) -> Dataset:
    return dataset_class.from_dict(
        {
            "conversation_id": [e.conversation_id for e in examples],
            "input_ids": [e.input_ids for e in examples],
            "labels": [e.labels for e in examples],
        }
    )


def _tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(tokenizer.get_vocab())
    return hashlib.sha256((text + str(tokenizer.chat_template)).encode()).hexdigest()[:16]


def _save_cached(folder: Path, splits: dict[str, Dataset], report: DatasetReport) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        split.save_to_disk(str(folder / name))
    state = {**report.to_dict(), "skipped": [vars(skip) for skip in report.skipped]}
    write_text_atomically(folder / "report.json", json.dumps(state))  # last: marks a complete cache


def _load_cached(folder: Path, load_from_disk: Any) -> Datasets:
    state = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    state["skipped"] = [Skipped(**skip) for skip in state["skipped"]]
    report = DatasetReport(**state, cached=True)
    validation = load_from_disk(str(folder / "validation")) if (folder / "validation").is_dir() else None
    return Datasets(load_from_disk(str(folder / "train")), validation, report)


def pad_batch(features: Sequence[Mapping[str, Any]], *, pad_id: int) -> dict[str, Any]:
    """Collate examples into tensors: right-padded ids, ``-100`` labels and a mask on the padding."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)

    def padded(key: str, value: int) -> Any:
        return torch.tensor([list(f[key]) + [value] * (longest - len(f[key])) for f in features])

    return {
        "input_ids": padded("input_ids", pad_id),
        "labels": padded("labels", IGNORE),
        "attention_mask": torch.tensor(
            [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features]
        ),
    }
