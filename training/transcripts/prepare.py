"""Reading and cleaning transcripts the one way both training and evaluation do it.

:func:`load_conversations` reads every input (see :mod:`training.transcripts.readers`) and redacts
personal data from every turn (see :mod:`training.transcripts.redact`) before anything else sees the text,
so a model is trained and evaluated on the same placeholders (``<EMAIL>``, ``<PHONE>``, ...).

Example::

    from training.transcripts.prepare import load_conversations
    data = load_conversations(["transcripts/"])
    print(data.summary())
    data.transcripts  # redacted Transcript records
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from chatbot.feedback import WRITTEN_BY
from training.transcripts.readers import CsvColumns, ReadReport, Transcript, read_transcripts
from training.transcripts.redact import KINDS, PLACEHOLDERS, Redactor

AUTHORS = WRITTEN_BY  # the marks of chatbot.feedback's export


@dataclass
class Conversations:
    """Transcripts ready for training, with what reading and redaction did to get them."""

    transcripts: list[Transcript]
    read: ReadReport
    redacted: Counter[str] = field(default_factory=Counter)
    # agent turns of a feedback export, by who wrote them (chatbot.feedback marks each)
    written_by: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        """The reader's summary (with every rejection) and a line of redaction counts."""
        counts = ", ".join(f"{kind} {self.redacted.get(kind, 0)}" for kind in KINDS)
        return f"{self.read.summary()}\nredacted: {counts}"

    def to_dict(self) -> dict[str, Any]:
        """The counts for ``card.json`` and the report."""
        return {
            "files": list(self.read.files),
            "read": self.read.read,
            "kept": self.read.kept,
            "rejected": self.read.by_reason(),
            "out_of_scope_turns": self.read.out_of_scope,
            "redacted": {kind: self.redacted.get(kind, 0) for kind in KINDS},
            "written_by": {author: self.written_by.get(author, 0) for author in AUTHORS},
        }


def load_conversations(
    inputs: Iterable[str | os.PathLike[str]],
    *,
    strict: bool = False,
    csv_columns: CsvColumns | None = None,
    format: str | None = None,
    redact: bool = True,
) -> Conversations:
    """Read ``inputs`` and redact every turn (unless ``redact`` is false).

    The reading options are those of :func:`training.transcripts.readers.read_transcripts`.
    """
    transcripts, report = read_transcripts(inputs, strict=strict, csv_columns=csv_columns, format=format)
    redactor = Redactor()
    if redact:
        transcripts = [_redacted(transcript, redactor) for transcript in transcripts]
    return Conversations(transcripts, report, redactor.counts, written_by(report.files))


def written_by(files: Iterable[str | os.PathLike[str]]) -> Counter[str]:
    """How many agent turns of the JSON files a feedback export marked as a staff member's
    correction, a person's reply or the bot's (``"written_by"``; transcripts have no mark)."""
    counts: Counter[str] = Counter()
    for path in map(Path, files):
        if not path.name.lower().removesuffix(".gz").endswith((".jsonl", ".json")):
            continue
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for record in _json_records(text):
            messages = record.get("messages") if isinstance(record, dict) else None
            for message in messages if isinstance(messages, list) else ():
                author = message.get("written_by") if isinstance(message, dict) else None
                if author in AUTHORS:
                    counts[author] += 1
    return counts


def _json_records(text: str) -> Iterator[Any]:
    """The records of a JSON Lines file, or of a JSON array (lines the reader rejected are skipped
    here: the reader already said why)."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        with contextlib.suppress(ValueError):
            yield from json.loads(stripped)
        return
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            yield json.loads(line)


def _redacted(transcript: Transcript, redactor: Redactor) -> Transcript:
    turns = tuple(replace(turn, content=redactor(turn.content)) for turn in transcript.turns)
    return replace(transcript, turns=turns)


def example_questions(transcripts: Iterable[Transcript], *, limit: int = 4) -> list[str]:
    """Opening customer requests to offer as examples in a chat page (recorded in the card).

    A conversation's opening request is its first customer turn of four words or more (past a
    greeting). Questions come first, then the most frequent; among equally frequent ones, those
    nearest 40 characters. Openings with a redaction placeholder (``<EMAIL>``) are never offered.
    """
    counts: Counter[str] = Counter()
    first_seen: dict[str, str] = {}
    for transcript in transcripts:
        asks = (
            turn.content
            for turn in transcript.turns
            if turn.role == "user" and len(turn.content.split()) >= 4
        )
        opening = next(asks, None)  # past a bare "hi there"
        if opening is None or not 12 <= len(opening) <= 120 or "\n" in opening:
            continue
        if any(placeholder in opening for placeholder in PLACEHOLDERS.values()):
            continue
        key = " ".join(opening.casefold().split())
        counts[key] += 1
        first_seen.setdefault(key, opening)

    def rank(key: str) -> tuple[int, int, int]:
        return (0 if key.endswith("?") else 1, -counts[key], abs(len(key) - 40))

    return [first_seen[key] for key in sorted(counts, key=rank)[:limit]]
