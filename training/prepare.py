"""Reading and cleaning transcripts the one way both training and evaluation do it.

:func:`load_conversations` reads every input (see :mod:`training.readers`) and redacts
personal data from every turn (see :mod:`training.redact`) before anything else sees the text,
so a model is trained and evaluated on the same placeholders (``<EMAIL>``, ``<PHONE>``, ...).

Example::

    from training.prepare import load_conversations
    data = load_conversations(["transcripts/"])
    print(data.summary())
    data.transcripts  # redacted Transcript records
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from training.readers import CsvColumns, ReadReport, Transcript, Turn, read_transcripts
from training.redact import KINDS, Redactor


@dataclass
class Conversations:
    """Transcripts ready for training, with what reading and redaction did to get them."""

    transcripts: list[Transcript]
    read: ReadReport
    redacted: Counter[str] = field(default_factory=Counter)

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
            "redacted": {kind: self.redacted.get(kind, 0) for kind in KINDS},
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

    The reading options are those of :func:`training.readers.read_transcripts`.
    """
    transcripts, report = read_transcripts(inputs, strict=strict, csv_columns=csv_columns, format=format)
    redactor = Redactor()
    if redact:
        transcripts = [_redacted(transcript, redactor) for transcript in transcripts]
    return Conversations(transcripts, report, redactor.counts)


def _redacted(transcript: Transcript, redactor: Redactor) -> Transcript:
    turns = tuple(Turn(turn.role, redactor(turn.content)) for turn in transcript.turns)
    return replace(transcript, turns=turns)
