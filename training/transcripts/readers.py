"""Reading support transcripts: JSON Lines, help-desk CSV exports and plain text, as one record.

Support teams bring their chats in three formats; :func:`read_transcripts` turns all of them into
:class:`Transcript` records (an id, where it came from, and its turns) plus a :class:`ReadReport`
that accounts for every conversation it read: kept, or rejected with file, line and reason.

- **JSON Lines** (``.jsonl``, ``.json``): one conversation per line,
  ``{"id": ..., "messages": [{"role": ..., "content": ...}, ...]}``; a ``.json`` file may also
  hold one JSON array of such objects.
- **CSV** (``.csv``): one row per turn, grouped by a conversation column; the columns are found by
  their usual names (see :data:`COLUMN_NAMES`) or named with :class:`CsvColumns`.
- **Plain text** (``.txt``): ``Customer:`` / ``Agent:`` lines, a line without a prefix continues
  the turn above, blank lines separate conversations.

Each may be gzipped (``chats.jsonl.gz``). In every format consecutive turns by one speaker are
merged, text is stripped, empty turns are left out, and a conversation needs at least one agent
(``assistant``) turn. Whole files that cannot be read raise :class:`TranscriptError`.

**Out-of-scope labels.** A customer turn may be labelled as something the bot should hand to a
person rather than answer ("What's the weather like?" to a shop): ``Turn.out_of_scope``. JSON
Lines: ``"out_of_scope": true`` on a message, or on the conversation (then every customer turn of
it); CSV: an ``out_of_scope`` column (``true``/``false``, ``yes``/``no``, ``1``/``0``, empty is
false); plain text: ``Customer [out of scope]: ...``. A label that is not one of those, or on
an agent or system turn, rejects the conversation (reason ``bad-label``) with its file and line.
Merged customer turns are out of scope when any part was. Labelled turns are kept like any
other: training learns the agent's answer to them; the scope index of the model leaves them out
and says how many (:mod:`chatbot.scope`); ``chatbot eval`` scores the handover decision on them.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from chatbot.errors import ChatbotError
from chatbot.types import Role

FORMATS = ("jsonl", "csv", "text")
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "text"}

# Speaker names of every format (lower case, with spaces and underscores read as "-").
SPEAKER_ROLES: dict[str, Role] = {
    **dict.fromkeys(("user", "customer", "client", "requester", "end-user"), "user"),
    **dict.fromkeys(("assistant", "agent", "support", "staff", "operator", "bot"), "assistant"),
    "system": "system",
}

# CSV header names looked for, in order of preference (lower case, spaces read as "_").
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "conversation": (
        "conversation_id",
        "conversation",
        "ticket_id",
        "ticket",
        "chat_id",
        "thread_id",
        "session_id",
    ),
    "speaker": ("speaker", "role", "author", "sender", "from", "author_type"),
    "text": ("text", "message", "body", "content", "comment"),
    "timestamp": ("timestamp", "time", "created_at", "date"),
    "out_of_scope": ("out_of_scope", "off_topic"),
}
REQUIRED_COLUMNS = ("conversation", "speaker", "text")

TEXT_PREFIX = re.compile(
    r"\s*(customer|agent|user|assistant|system)\s*(?:\[([^\]]*)\])?\s*:(.*)", re.IGNORECASE
)
TEXT_LABEL = re.compile(r"out[\s_-]+of[\s_-]+scope", re.IGNORECASE)  # Customer [out of scope]: ...
# CSV label cells (lower case, stripped); an empty cell is false
LABEL_VALUES = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False, "": False}
LABEL_HELP = "true or false (also yes/no, 1/0; empty is false)"
ROLE_HELP = "customer/user, agent/assistant or system"


class TranscriptError(ChatbotError):
    """Transcripts that cannot be read: a missing input, an unreadable file, a CSV without columns.

    Also raised by ``read_transcripts(..., strict=True)`` at the first rejected conversation.
    """


@dataclass(frozen=True)
class Turn:
    """One turn of a transcript: who spoke (``user`` is the customer, ``assistant`` the agent).

    ``out_of_scope`` marks a customer turn the bot should hand to a person (see the module's
    docstring for how each format labels it).
    """

    role: Role
    content: str
    out_of_scope: bool = False


@dataclass(frozen=True)
class Transcript:
    """One conversation as read.

    ``id`` is the source's conversation id, else ``"<file name>:<line>"``; ``line`` is the 1-based
    line where the conversation starts (for CSV, the line of its first row in the file).
    """

    id: str
    source: str
    line: int
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Rejection:
    """A conversation (or line) that was not kept, and why.

    ``reason`` is a short code: ``bad-json``, ``missing-field``, ``unknown-role``, ``no-speaker``,
    ``bad-label``, ``empty-text`` or ``no-agent-turn``; ``detail`` says what was found.
    """

    source: str
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}: {self.detail}"


@dataclass
class ReadReport:
    """What a read did: the files, how many conversations were read, kept and rejected."""

    files: list[str]
    read: int = 0
    kept: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    out_of_scope: int = 0  # customer turns labelled out of scope in the kept conversations

    def by_reason(self) -> dict[str, int]:
        """The number of rejections per reason, most frequent first."""
        counts: dict[str, int] = {}
        for rejection in self.rejected:
            counts[rejection.reason] = counts.get(rejection.reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def summary(self) -> str:
        """One line of totals, then one ``file:line: reason: detail`` line per rejection."""
        head = (
            f"read {_plural(self.read, 'conversation')} from {_plural(len(self.files), 'file')}: "
            f"kept {self.kept}, rejected {len(self.rejected)}"
        )
        if self.rejected:
            head += " (" + ", ".join(f"{reason} {n}" for reason, n in self.by_reason().items()) + ")"
        if self.out_of_scope:
            head += f"; {_plural(self.out_of_scope, 'customer turn')} labelled out of scope"
        return "\n".join([head, *(str(rejection) for rejection in self.rejected)])


@dataclass(frozen=True)
class CsvColumns:
    """The CSV columns to read (header names, case-insensitive); ``None`` finds them by name."""

    conversation: str | None = None
    speaker: str | None = None
    text: str | None = None
    timestamp: str | None = None
    out_of_scope: str | None = None


@dataclass(frozen=True)
class _Draft:
    """A conversation as found in a file, before its turns are cleaned and checked."""

    id: str
    source: str
    line: int
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class _Row:
    """One CSV row of a conversation."""

    line: int
    speaker: str
    text: str
    timestamp: str | None
    label: str | None  # the out-of-scope cell, when the file has that column


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- the entry point ------------------------------------------------------------------------


def read_transcripts(
    inputs: Iterable[str | os.PathLike[str]],
    *,
    strict: bool = False,
    csv_columns: CsvColumns | None = None,
    format: str | None = None,
) -> tuple[list[Transcript], ReadReport]:
    """Read every transcript in ``inputs`` (files, folders, glob patterns).

    ``format`` ("jsonl", "csv" or "text") overrides the format the file names imply;
    ``csv_columns`` names CSV columns that are not found by their usual names. Rejected
    conversations are listed in the report; with ``strict=True`` the first one raises
    :class:`TranscriptError` instead. Files that cannot be read raise :class:`TranscriptError`.
    """
    if format is not None and format not in FORMATS:
        raise TranscriptError(f"unknown transcript format {format!r}", hint=f"use one of {FORMATS}")
    files = find_transcript_files(inputs, format=format)
    report = ReadReport(files=[str(path) for path in files])
    transcripts: list[Transcript] = []
    for path in files:
        for record in _read_file(path, format=format or _format_of(path), csv_columns=csv_columns):
            _tally(record, transcripts, report, strict=strict)
    return transcripts, report


def _tally(
    record: Transcript | Rejection, transcripts: list[Transcript], report: ReadReport, *, strict: bool
) -> None:
    """Count one record into the report; in strict mode a rejection raises."""
    report.read += 1
    if isinstance(record, Transcript):
        transcripts.append(record)
        report.kept += 1
        report.out_of_scope += sum(turn.out_of_scope for turn in record.turns)
        return
    if strict:
        raise TranscriptError(
            str(record), hint="fix that record, or read without strict=True to skip and report it"
        )
    report.rejected.append(record)


# --- finding the files ------------------------------------------------------------------------


def find_transcript_files(
    inputs: Iterable[str | os.PathLike[str]], *, format: str | None = None
) -> list[Path]:
    """The files named by ``inputs``, in order, each once.

    A folder gives its transcript files (``*.jsonl``, ``*.json``, ``*.csv``, ``*.txt``, each
    optionally ``.gz``), recursively and sorted; a glob pattern gives the transcript files it
    matches (any file when ``format`` is given). An input that gives no file raises.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: dict[Path, Path] = {}
    for item in inputs:
        for path in _expand(os.fspath(item), format=format):
            files.setdefault(path.resolve(), path)
    if not files:
        raise TranscriptError("no transcript inputs given", hint="pass files, folders or glob patterns")
    return list(files.values())


def _expand(item: str, *, format: str | None) -> list[Path]:
    """The files one input names; raises when there are none."""
    path = Path(item)
    if path.is_file():
        if format is None and _format_of(path) is None:
            raise TranscriptError(
                f"{item}: cannot tell the transcript format from the file name",
                hint=f"name it *.jsonl, *.json, *.csv or *.txt (optionally .gz), or pass format= {FORMATS}",
            )
        return [path]
    if path.is_dir():
        found = _transcript_files(sorted(path.rglob("*")), format=None)
        what = "folder"
    elif glob.has_magic(item):
        found = _transcript_files([Path(p) for p in sorted(glob.glob(item, recursive=True))], format=format)
        what = "pattern"
    else:
        raise TranscriptError(f"{item}: no such file or folder", hint="check the path")
    if not found:
        raise TranscriptError(
            f"{item}: {what} matches no transcript file",
            hint="transcripts are *.jsonl, *.json, *.csv or *.txt, each optionally .gz",
        )
    return found


def _transcript_files(paths: Sequence[Path], *, format: str | None) -> list[Path]:
    """The files among ``paths`` (folders expanded) that are transcripts."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += _transcript_files(sorted(path.rglob("*")), format=None)
        elif path.is_file() and (format is not None or _format_of(path) is not None):
            found.append(path)
    return found


def _format_of(path: Path) -> str | None:
    """The format a file name implies (``chats.jsonl.gz`` is jsonl), or ``None``."""
    name = path.name.lower().removesuffix(".gz")
    return EXTENSIONS.get(os.path.splitext(name)[1])


# --- reading one file ------------------------------------------------------------------------


def _read_file(
    path: Path, *, format: str | None, csv_columns: CsvColumns | None
) -> Iterator[Transcript | Rejection]:
    """Every conversation of one file, kept or rejected."""
    source = str(path)
    text = _load_text(path)
    if format == "csv":
        records = _read_csv(text, source, csv_columns or CsvColumns())
    elif format == "text":
        records = _read_text(text, source)
    else:
        records = _read_json(text, source, array=path.name.lower().removesuffix(".gz").endswith(".json"))
    for record in records:
        yield _finish(record) if isinstance(record, _Draft) else record


def _load_text(path: Path) -> str:
    """The file's text: gunzipped when named ``.gz``, decoded as UTF-8 (a BOM is dropped)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TranscriptError(f"{path}: cannot read: {error.strerror}", hint="check the path") from error
    if path.name.lower().endswith(".gz"):
        data = _gunzip(data, path)
    text = _decode(data, path)
    if not text.strip():
        raise TranscriptError(f"{path}: the file is empty", hint="export the transcripts again")
    return text


def _gunzip(data: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise TranscriptError(
            f"{path}: named .gz but is not a valid gzip file ({error})",
            hint="compress it with gzip, or rename it without .gz if it is plain text",
        ) from error


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise TranscriptError(
            f"{path}:{line}: not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start}",
            hint="re-save the file as UTF-8 (in Excel: 'CSV UTF-8'; or iconv -f cp1252 -t utf-8)",
        ) from error


def _finish(draft: _Draft) -> Transcript | Rejection:
    """Clean a conversation's turns (strip, drop empty, merge) and check it has an agent turn."""
    turns = _merge_turns(draft.turns)
    if not turns:
        detail = f"conversation {draft.id!r}: none of its {_plural(len(draft.turns), 'turn')} has text"
        return Rejection(draft.source, draft.line, "empty-text", detail)
    if not any(turn.role == "assistant" for turn in turns):
        detail = f"conversation {draft.id!r} has no agent turn (a conversation needs at least one)"
        return Rejection(draft.source, draft.line, "no-agent-turn", detail)
    return Transcript(draft.id, draft.source, draft.line, turns)


def _merge_turns(turns: Iterable[Turn]) -> tuple[Turn, ...]:
    """Stripped, non-empty turns, with consecutive turns of one speaker joined by a newline."""
    merged: list[Turn] = []
    for turn in turns:
        content = turn.content.strip()
        if not content:
            continue
        out_of_scope = turn.out_of_scope
        if merged and merged[-1].role == turn.role:
            content = f"{merged[-1].content}\n{content}"
            out_of_scope = merged.pop().out_of_scope or out_of_scope
        merged.append(Turn(turn.role, content, out_of_scope))
    return tuple(merged)


def _role(value: str) -> Role | None:
    """The role a speaker name stands for (case-insensitive), or ``None``."""
    return SPEAKER_ROLES.get(re.sub(r"[\s_]+", "-", value.strip().lower()))


def _default_id(source: str, line: int) -> str:
    return f"{Path(source).name}:{line}"


# --- JSON Lines ------------------------------------------------------------------------------


def _read_json(text: str, source: str, *, array: bool) -> Iterator[_Draft | Rejection]:
    """JSON Lines; or, in a ``.json`` file (``array``) that starts with ``[``, a JSON array."""
    if array and text.lstrip().startswith("["):
        for line, value in _json_array(text, source):
            yield _draft_from_json(value, source, line)
        return
    for number, line_text in enumerate(text.splitlines(), start=1):
        if line_text.strip():
            yield _parse_json_line(line_text, source, number)


def _parse_json_line(line_text: str, source: str, line: int) -> _Draft | Rejection:
    try:
        value = json.loads(line_text)
    except json.JSONDecodeError as error:
        return Rejection(source, line, "bad-json", f"{error.msg} at column {error.colno}")
    return _draft_from_json(value, source, line)


def _json_array(text: str, source: str) -> Iterator[tuple[int, object]]:
    """The elements of a JSON array, each with the line it starts on."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        position = _skip_space(text, position)
        if text.startswith("]", position):
            return
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise TranscriptError(
                f"{source}:{error.lineno}: not valid JSON: {error.msg} at column {error.colno}",
                hint="fix the file, or write one conversation per line (JSON Lines)",
            ) from error
        yield text.count("\n", 0, position) + 1, value
        position = _skip_space(text, end)
        if text.startswith(",", position):
            position += 1


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _draft_from_json(value: object, source: str, line: int) -> _Draft | Rejection:
    """A conversation from a ``{"id": ..., "messages": [...]}`` object."""
    messages = value.get("messages") if isinstance(value, dict) else None
    if not isinstance(value, dict) or not isinstance(messages, list):
        detail = f'expected an object with a "messages" list, got {_json_kind(value, "messages")}'
        return Rejection(source, line, "missing-field", detail)
    whole = value.get("out_of_scope", False)
    if not isinstance(whole, bool):
        detail = f'the conversation\'s "out_of_scope" is {whole!r}; expected true or false'
        return Rejection(source, line, "bad-label", detail)
    turns: list[Turn] = []
    for number, message in enumerate(messages, start=1):
        turn = _turn_from_json(message, number, source, line)
        if isinstance(turn, Rejection):
            return turn
        turns.append(Turn(turn.role, turn.content, True) if whole and turn.role == "user" else turn)
    raw_id = value.get("id")
    conversation_id = _default_id(source, line) if raw_id in (None, "") else str(raw_id)
    return _Draft(conversation_id, source, line, tuple(turns))


def _turn_from_json(message: object, number: int, source: str, line: int) -> Turn | Rejection:
    """One message object as a turn, or why it cannot be one."""
    if not isinstance(message, dict):
        return Rejection(source, line, "missing-field", f"message {number} is not an object")
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or not isinstance(content, str):
        detail = f'message {number} needs a text "role" and "content", got {_json_kind(message)}'
        return Rejection(source, line, "missing-field", detail)
    mapped = _role(role)
    if mapped is None:
        detail = f"message {number} has role {role!r}; expected {ROLE_HELP}"
        return Rejection(source, line, "unknown-role", detail)
    label = message.get("out_of_scope", False)
    if not isinstance(label, bool):
        detail = f'message {number} has "out_of_scope": {label!r}; expected true or false'
        return Rejection(source, line, "bad-label", detail)
    if label and mapped != "user":
        return _agent_label(source, line, f"message {number}")
    return Turn(mapped, content, label)


def _agent_label(source: str, line: int, where: str) -> Rejection:
    detail = f"{where} is labelled out of scope, but only a customer turn can be"
    return Rejection(source, line, "bad-label", detail)


def _json_kind(value: object, key: str | None = None) -> str:
    """A short description of a JSON value, for messages."""
    if isinstance(value, dict):
        if key is not None and key in value:
            return f'"{key}" as {type(value[key]).__name__}'
        return "keys " + ", ".join(f'"{k}"' for k in value) if value else "an empty object"
    return type(value).__name__


# --- CSV -------------------------------------------------------------------------------------


def _read_csv(text: str, source: str, columns: CsvColumns) -> Iterator[_Draft | Rejection]:
    """One row per turn, grouped by conversation in order of first appearance."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    index = _resolve_columns(header, columns, source)
    groups: dict[str, list[_Row]] = {}
    for line, cells in _csv_rows(reader, source):
        if not any(cell.strip() for cell in cells):
            continue
        conversation = _cell(cells, index["conversation"]).strip()
        if not conversation:
            yield Rejection(source, line, "missing-field", "the row has no conversation id")
            continue
        timestamp = None if index["timestamp"] is None else _cell(cells, index["timestamp"])
        label = None if index["out_of_scope"] is None else _cell(cells, index["out_of_scope"])
        row = _Row(line, _cell(cells, index["speaker"]), _cell(cells, index["text"]), timestamp, label)
        groups.setdefault(conversation, []).append(row)
    for conversation, rows in groups.items():
        yield _csv_conversation(conversation, rows, source)


def _csv_rows(reader: Iterator[list[str]], source: str) -> Iterator[tuple[int, list[str]]]:
    """The rows after the header, each with the line it starts on (quoted fields span lines)."""
    last_line = 1
    try:
        for cells in reader:
            yield last_line + 1, cells
            last_line = reader.line_num  # type: ignore[attr-defined]
    except csv.Error as error:
        raise TranscriptError(
            f"{source}:{last_line + 1}: not valid CSV: {error}", hint="fix the row, or export it again"
        ) from error


def _cell(cells: list[str], index: int | None) -> str:
    return cells[index] if index is not None and index < len(cells) else ""


def _resolve_columns(header: list[str], columns: CsvColumns, source: str) -> dict[str, int | None]:
    """The index of each column: as named in ``columns``, else found by its usual names."""
    names = [_column_key(name) for name in header]
    index: dict[str, int | None] = {}
    for role, candidates in COLUMN_NAMES.items():
        chosen: str | None = getattr(columns, role)
        if chosen is not None and _column_key(chosen) not in names:
            raise TranscriptError(
                f"{source}: no column {chosen!r} (CsvColumns.{role}); found columns: {', '.join(header)}",
                hint=f"set CsvColumns({role}=...) to one of the columns found",
            )
        wanted = (_column_key(chosen),) if chosen is not None else candidates
        index[role] = next((names.index(name) for name in wanted if name in names), None)
    _check_required(index, header, source)
    return index


def _check_required(index: dict[str, int | None], header: list[str], source: str) -> None:
    missing = [role for role in REQUIRED_COLUMNS if index[role] is None]
    if not missing:
        return
    expected = "; ".join(f"{role}: one of {', '.join(COLUMN_NAMES[role])}" for role in missing)
    flags = " ".join(f"--csv-{role} COLUMN" for role in missing)
    settings = ", ".join(f'{role}="<column>"' for role in missing)
    raise TranscriptError(
        f"{source}: cannot find the {' and '.join(missing)} column(s); "
        f"found columns: {', '.join(header)}; expected {expected}",
        hint=f"name them with {flags} (in Python: csv_columns=CsvColumns({settings}))",
    )


def _column_key(name: str) -> str:
    """A header name as compared: lower case, spaces and dashes read as underscores."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _csv_conversation(conversation: str, rows: list[_Row], source: str) -> _Draft | Rejection:
    """The rows of one conversation as a draft, or a rejection at the first unknown speaker."""
    turns: list[Turn] = []
    for row in _in_time_order(rows):
        role = _role(row.speaker)
        if role is None:
            detail = f"conversation {conversation!r}: speaker {row.speaker!r}; expected {ROLE_HELP}"
            return Rejection(source, row.line, "unknown-role", detail)
        label = LABEL_VALUES.get((row.label or "").strip().lower())
        if label is None:
            detail = f"conversation {conversation!r}: out-of-scope cell {row.label!r}; expected {LABEL_HELP}"
            return Rejection(source, row.line, "bad-label", detail)
        if label and role != "user":
            return _agent_label(source, row.line, f"conversation {conversation!r}: a {row.speaker!r} row")
        turns.append(Turn(role, row.text, label))
    return _Draft(conversation, source, rows[0].line, tuple(turns))


def _in_time_order(rows: list[_Row]) -> list[_Row]:
    """The rows sorted by timestamp when every one parses (ISO 8601), else in file order."""
    times = [time for time in map(_parse_time, (row.timestamp for row in rows)) if time is not None]
    if len(times) < len(rows):
        return rows
    try:  # a stable sort: rows with equal times keep their file order
        return [row for _, row in sorted(zip(times, rows, strict=True), key=lambda pair: pair[0])]
    except TypeError:  # naive and aware times mixed: no safe order
        return rows


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    value = value.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# --- plain text ------------------------------------------------------------------------------


def _read_text(text: str, source: str) -> Iterator[_Draft | Rejection]:
    """``Customer:`` / ``Agent:`` lines; blank lines separate conversations."""
    block: list[tuple[int, str]] = []
    for number, line_text in enumerate(text.splitlines(), start=1):
        if line_text.strip():
            block.append((number, line_text))
        elif block:
            yield _text_conversation(block, source)
            block = []
    if block:
        yield _text_conversation(block, source)


def _text_conversation(block: list[tuple[int, str]], source: str) -> _Draft | Rejection:
    """One block of lines as a conversation; a line without a prefix continues the turn above."""
    start = block[0][0]
    turns: list[tuple[Role, list[str], bool]] = []
    for number, line_text in block:
        match = TEXT_PREFIX.match(line_text)
        if match:
            role, marker = SPEAKER_ROLES[match[1].lower()], match[2]
            if marker is not None and not TEXT_LABEL.fullmatch(marker.strip()):
                detail = f"line {number} has the marker [{marker}]; the one marker is [out of scope]"
                return Rejection(source, number, "bad-label", detail)
            if marker is not None and role != "user":
                return _agent_label(source, number, f"line {number}")
            turns.append((role, [match[3]], marker is not None))
        elif turns:
            turns[-1][1].append(line_text.rstrip())
        else:
            detail = f"line {number} has no speaker; start each turn with 'Customer:' or 'Agent:'"
            return Rejection(source, number, "no-speaker", detail)
    raw = tuple(Turn(role, "\n".join(lines).strip(), label) for role, lines, label in turns)
    return _Draft(_default_id(source, start), source, start, raw)
