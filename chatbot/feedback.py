"""Stored conversations and their thumbs up/down, exported as training data.

Each conversation in the store becomes one JSON Lines record per *epoch* (the turns between two
resets; a reset starts the history over, so what follows was not conditioned on what came
before), in the chat format ``training.transcripts.readers`` reads::

    {"id": "customer-42", "messages": [{"role": "system", "content": ...},
                                       {"role": "user", "content": ...},
                                       {"role": "assistant", "content": ...}, ...]}

The first epoch keeps the conversation id; later ones are ``<id>/reset-1``, ``<id>/reset-2``...

**Corrections.** A reply a staff member corrected (:meth:`chatbot.engine.Engine.correct`) is
exported with its latest correction in its place, whatever its rating, and ends its epoch's
record there: the turns after it answered the original, not the correction.

**The cut rule.** A reply that must not be learned from ends its epoch's training data: the record
stops just before the user turn(s) that led to it, because every later turn was conditioned on
that reply. Except where a person answered after it: a bot reply followed by a staff member's
(the bot was unsure, or wrong, and a person took over) is dropped, and the customer's messages
before and after it lead to the person's answer.

A reply is left out when its latest rating is thumbs down (``disliked``), when it did not end at
the end-of-turn token (``unfinished``: cut at the token budget, cancelled, or failed; training
would teach the model to stop mid-sentence), or when it is empty. ``keep_unfinished``
keeps unfinished replies. Turns after the last kept reply (a customer who wrote and left) are
dropped; an epoch with no reply left is skipped. The :class:`ExportReport` counts every
conversation and reply that was not exported, by reason, so nothing is dropped silently.

Replies a staff member wrote after taking a conversation over (``meta["author"] == "person"``,
see :meth:`chatbot.engine.Engine.person_reply`) are exported as the agent's turns like the bot's;
the report counts them apart, as the best examples a team has. Each exported agent turn says who
wrote it (``"written_by"``: ``"bot"``, ``"person"`` or ``"correction"``), so ``chatbot train``
counts them too; the transcript readers ignore the key.

The exported text is the customers' own, unredacted: the file is written readable by its owner
only, and training redacts it when it reads it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from chatbot.errors import ChatbotError
from chatbot.store import Store
from chatbot.types import Message

__all__ = [
    "WRITTEN_BY",
    "ExportOptions",
    "ExportReport",
    "FeedbackExportError",
    "cut",
    "export_feedback",
    "export_feedback_file",
    "parse_since",
    "split_epochs",
    "training_records",
]

PAGE = 500  # conversation ids read from the store per query
FINISHED = "stop"  # the finish_reason of a reply that ended at its end-of-turn token
FILE_MODE = 0o600  # customer conversations: readable by the owner only


class FeedbackExportError(ChatbotError):
    """An export that cannot run: a bad ``--since`` date, an output file that cannot be written."""


@dataclass(frozen=True)
class ExportOptions:
    """Which conversations and replies become training data."""

    only_liked: bool = False  # keep only epochs with at least one thumbs-up reply
    since: datetime | None = None  # keep only epochs whose first turn is at or after this time
    keep_unfinished: bool = False  # keep replies cut at the token budget, cancelled or failed


@dataclass
class ExportReport:
    """What an export wrote and what it left out, by reason."""

    conversations: int = 0  # stored conversations read
    exported: int = 0  # training conversations written (one per epoch)
    replies: int = 0  # assistant replies written
    liked: int = 0  # of which rated thumbs up
    by_people: int = 0  # of which written by a staff member who took the conversation over
    corrections: int = 0  # of which a staff member's correction in place of the bot's reply
    skipped: Counter[str] = field(default_factory=Counter)  # epochs not written, by reason
    left_out: Counter[str] = field(default_factory=Counter)  # replies not written, by reason

    def summary(self) -> str:
        """One line of totals, e.g. for the end of ``chatbot feedback export``."""
        people = f", {self.by_people} written by people" if self.by_people else ""
        corrected = f", {self.corrections} corrected by people" if self.corrections else ""
        line = (
            f"exported {_plural(self.exported, 'conversation')} with {_plural(self.replies, 'reply')} "
            f"({self.liked} liked{people}{corrected}) "
            f"from {_plural(self.conversations, 'stored conversation')}"
        )
        for label, counts in (("skipped", self.skipped), ("left out", self.left_out)):
            if counts:
                line += f"; {label} {sum(counts.values())} ({_by_reason(counts)})"
        return line


def export_feedback(store: Store, out: TextIO, options: ExportOptions | None = None) -> ExportReport:
    """Write the training records of every conversation in ``store`` to ``out``, one per line."""
    report = ExportReport()
    for record in training_records(store, options or ExportOptions(), report):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return report


def export_feedback_file(
    store: Store, path: str | os.PathLike[str], options: ExportOptions | None = None
) -> ExportReport:
    """Like :func:`export_feedback`, into a file that appears whole or not at all (mode 0600)."""
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    except OSError as error:
        raise FeedbackExportError(
            f"cannot write {target}: {error.strerror}", hint="choose a file in a folder you can write to"
        ) from error
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            report = export_feedback(store, out, options)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return report


def parse_since(text: str) -> datetime:
    """``--since``: an ISO 8601 date or time (``2025-01-31``, ``2025-01-31T12:00Z``); naive means UTC."""
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise FeedbackExportError(
            f"--since {text!r} is not a date", hint="write it as 2025-01-31 or 2025-01-31T12:00:00+00:00"
        ) from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- records


def training_records(store: Store, options: ExportOptions, report: ExportReport) -> Iterator[dict[str, Any]]:
    """The training record of every epoch that has replies left, counting everything in ``report``."""
    for conversation_id in all_conversation_ids(store):
        report.conversations += 1
        # The transcript first: a turn stored between the two reads is then left out of this
        # export, never mistaken for a turn of an earlier epoch.
        transcript = store.transcript(conversation_id)
        conversation = store.get_conversation(conversation_id)
        ratings = latest_ratings(store, conversation_id)
        corrections = {item.message_id: item.content for item in store.corrections(conversation_id)}
        epochs = split_epochs(transcript, {m.id for m in conversation.messages})
        if not epochs:
            report.skipped["no turns"] += 1
        for index, turns in enumerate(epochs):
            kept = _kept_turns(turns, ratings, corrections, options, report)
            if kept:
                yield _record(_epoch_id(conversation_id, index), conversation.system_prompt, kept)


def all_conversation_ids(store: Store) -> list[str]:
    """Every conversation id in the store, each once (the store pages them by last update)."""
    seen: dict[str, None] = {}
    offset = 0
    while page := store.conversation_ids(limit=PAGE, offset=offset):
        seen.update(dict.fromkeys(page))
        offset += len(page)
    return list(seen)


def latest_ratings(store: Store, conversation_id: str) -> dict[int, int]:
    """message id -> its latest rating (+1 or -1)."""
    return {rating.message_id: rating.rating for rating in store.feedback(conversation_id)}


def split_epochs(transcript: Sequence[Message], current_ids: set[int]) -> list[tuple[Message, ...]]:
    """The transcript's turns cut into epochs, oldest first.

    The turns of the current epoch are ``current_ids``. Earlier epochs are told apart by the
    records' ``epoch`` when the store provides one; without it they come out as one epoch.
    """
    epochs: list[list[Message]] = []
    last: tuple[bool, int] | None = None
    for message in transcript:
        key = (message.id in current_ids, int(getattr(message, "epoch", 0)))
        if key != last:
            epochs.append([])
            last = key
        epochs[-1].append(message)
    return [tuple(epoch) for epoch in epochs]


def cut(
    turns: Sequence[Message],
    ratings: Mapping[int, int],
    *,
    keep_unfinished: bool = False,
    corrections: Mapping[int, str] | None = None,
) -> tuple[tuple[Message, ...], Counter[str]]:
    """The turns to train on, and the replies left out by reason (see the module docstring).

    A corrected reply comes out with the correction as its content (``meta["written_by"]`` is
    "correction"), and the turns after it are left out. A bot reply a person answered after (the
    next agent turn is a person's: the bot failed there) is dropped, not cut at: the customer's
    messages around it then lead to the person's answer."""
    left_out: Counter[str] = Counter()
    corrections = corrections or {}
    kept: list[Message] = []
    for index, turn in enumerate(turns):
        if turn.role == "assistant" and turn.id in corrections:
            meta = {**turn.meta, "written_by": "correction"}
            kept.append(replace(turn, content=corrections[turn.id], meta=meta))
            left_out["after a corrected reply"] += _replies_after(turns, index)
            break
        if turn.role == "assistant" and _answered_by_a_person(turns, index):
            left_out["a person answered instead"] += 1
            continue
        reason = _unfit(turn, ratings, keep_unfinished=keep_unfinished)
        if reason is not None:
            left_out[reason] += 1
            left_out["after a left-out reply"] += _replies_after(turns, index)
            break  # the customer's turns that led to it go too (below)
        kept.append(turn)
    while kept and kept[-1].role != "assistant":  # nothing to learn from a last unanswered turn
        kept.pop()
    return tuple(kept), +left_out


def _replies_after(turns: Sequence[Message], index: int) -> int:
    return sum(t.role == "assistant" for t in turns[index + 1 :])


def _answered_by_a_person(turns: Sequence[Message], index: int) -> bool:
    """Whether the bot's reply at ``index`` is followed by a person's (the next agent turn)."""
    if turns[index].meta.get("author") == "person":
        return False
    following = next((t for t in turns[index + 1 :] if t.role == "assistant"), None)
    return following is not None and following.meta.get("author") == "person"


def _kept_turns(
    turns: Sequence[Message],
    ratings: Mapping[int, int],
    corrections: Mapping[int, str],
    options: ExportOptions,
    report: ExportReport,
) -> tuple[Message, ...]:
    """One epoch's turns to export (empty when it is skipped), counted into ``report``."""
    if options.since is not None and turns[0].created_at < options.since:
        report.skipped["before --since"] += 1
        return ()
    kept, left_out = cut(turns, ratings, keep_unfinished=options.keep_unfinished, corrections=corrections)
    report.left_out.update(left_out)
    liked = sum(ratings.get(turn.id) == 1 for turn in kept)
    reason = _skip_reason(turns, kept, liked, only_liked=options.only_liked)
    if reason is not None:
        report.skipped[reason] += 1
        return ()
    report.exported += 1
    report.replies += sum(turn.role == "assistant" for turn in kept)
    written_by = Counter(written(turn) for turn in kept if turn.role == "assistant")
    report.by_people += written_by["person"]
    report.corrections += written_by["correction"]
    report.liked += liked
    return kept


def _skip_reason(
    turns: Sequence[Message], kept: Sequence[Message], liked: int, *, only_liked: bool
) -> str | None:
    if not any(turn.role == "assistant" for turn in turns):
        return "no reply"
    if not kept:
        return "no reply left"
    if only_liked and not liked:
        return "no liked reply"
    return None


def _unfit(turn: Message, ratings: Mapping[int, int], *, keep_unfinished: bool) -> str | None:
    """Why an assistant reply must not be trained on, or ``None``."""
    if turn.role != "assistant":
        return None
    if ratings.get(turn.id) == -1:
        return "disliked"
    if not turn.content.strip():
        return "empty"
    finish = turn.meta.get("finish_reason", FINISHED)  # replies not written by the engine have none
    if finish != FINISHED and not keep_unfinished:
        return "unfinished"
    return None


WRITTEN_BY = ("correction", "person", "bot")  # who wrote an exported agent turn (``"written_by"``)


def written(turn: Message) -> str:
    """Who wrote an exported agent turn: "correction", "person" or "bot"."""
    if turn.meta.get("written_by") == "correction":
        return "correction"
    return "person" if turn.meta.get("author") == "person" else "bot"


def _record(record_id: str, system_prompt: str | None, turns: Sequence[Message]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in turns:
        message: dict[str, Any] = {"role": turn.role, "content": turn.content}
        if turn.role == "assistant":
            message["written_by"] = written(turn)
        messages.append(message)
    return {"id": record_id, "messages": messages}


def _epoch_id(conversation_id: str, index: int) -> str:
    return conversation_id if index == 0 else f"{conversation_id}/reset-{index}"


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def _by_reason(counts: Counter[str]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common())
