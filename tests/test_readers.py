"""Reading support transcripts: the three formats, grouping and merging, rejections, bad files."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pytest

from chatbot.errors import ChatbotError
from training.transcripts.readers import (
    CsvColumns,
    ReadReport,
    Rejection,
    Transcript,
    TranscriptError,
    Turn,
    find_transcript_files,
    read_transcripts,
)

DATA = Path(__file__).parent / "data" / "transcripts"
CHATS = DATA / "chats.jsonl"
HELPDESK = DATA / "helpdesk.csv"
TEXT = DATA / "transcripts.txt"
MALFORMED = DATA / "malformed.jsonl"
BAD_COLUMNS = DATA / "bad_columns.csv"

CHATS_EXPECTED = [
    Transcript(
        id="order-1",
        source=str(CHATS),
        line=1,
        turns=(
            Turn("system", "You are the support agent of Example Shop."),
            Turn("user", "Where is my order?"),
            Turn("assistant", "Could you give me the order number?"),
            Turn("user", "It is 12345."),
            Turn("assistant", "It ships tomorrow."),
        ),
    ),
    Transcript(
        id="chats.jsonl:3",
        source=str(CHATS),
        line=3,
        turns=(
            Turn("user", "Hi\nMy card was declined."),
            Turn("assistant", "Sorry to hear that.\nPlease try again."),
        ),
    ),
]


def read_one(path: Path, **options) -> tuple[list[Transcript], ReadReport]:
    return read_transcripts([path], **options)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def agent_replies(path: Path) -> list[str]:
    transcripts, report = read_one(path)
    assert not report.rejected, report.summary()
    return [turn.content for t in transcripts for turn in t.turns if turn.role == "assistant"]


# --- the formats -------------------------------------------------------------------------------


def test_jsonl_reads_ids_role_aliases_and_merges_turns():
    transcripts, report = read_one(CHATS)
    assert transcripts == CHATS_EXPECTED
    assert (report.files, report.read, report.kept, report.rejected) == ([str(CHATS)], 2, 2, [])


def test_jsonl_gz_is_read_like_jsonl(tmp_path):
    path = tmp_path / "chats.jsonl.gz"
    path.write_bytes(gzip.compress(CHATS.read_bytes()))
    transcripts, _ = read_one(path)
    assert [t.turns for t in transcripts] == [t.turns for t in CHATS_EXPECTED]
    assert [t.id for t in transcripts] == ["order-1", "chats.jsonl.gz:3"]
    assert transcripts[0].source == str(path)


def test_json_array_file_gives_each_element_with_its_line(tmp_path):
    path = write(
        tmp_path / "export.json",
        '[\n  {"id": 7, "messages": [{"role": "user", "content": "Hi"},\n'
        '    {"role": "assistant", "content": "Hello"}]},\n'
        '  {"messages": [{"role": "agent", "content": "Bye"}]}\n]\n',
    )
    transcripts, _ = read_one(path)
    assert [(t.id, t.line) for t in transcripts] == [("7", 2), ("export.json:4", 4)]


def test_csv_groups_tickets_sorts_by_time_and_maps_speakers():
    transcripts, report = read_one(HELPDESK)
    assert transcripts == [
        Transcript(
            id="T-2",
            source=str(HELPDESK),
            line=2,
            turns=(
                Turn("user", "Hello, my parcel never arrived.\nIt was order 555."),
                Turn("assistant", "Let me check the tracking."),
            ),
        ),
        Transcript(
            id="T-1",
            source=str(HELPDESK),
            line=3,
            turns=(
                Turn("user", "I want a refund.\nOrder 777."),
                Turn("assistant", "Refunds take 5 days.\nThey go back to your card."),
            ),
        ),
    ]
    assert report.read == report.kept == 2


def test_csv_keeps_file_order_when_a_timestamp_does_not_parse(tmp_path):
    path = write(
        tmp_path / "t.csv",
        "ticket,time,from,message\n"
        "1,2024-01-01T10:00:00,agent,Second\n"
        "1,yesterday,customer,First\n"
        "2,2024-01-01T10:00:00,agent,B\n"
        "2,2024-01-01 09:00:00,customer,A\n",
    )
    transcripts, _ = read_one(path)
    assert [[turn.content for turn in t.turns] for t in transcripts] == [["Second", "First"], ["A", "B"]]


def test_csv_without_timestamp_column_keeps_file_order_and_handles_a_bom(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffChat_ID,Sender,Message\nc,agent,Hi\nc,client,Hello\n".encode())
    transcripts, _ = read_one(path)
    assert transcripts[0].turns == (Turn("assistant", "Hi"), Turn("user", "Hello"))


def test_csv_explicit_columns_are_case_insensitive():
    transcripts, report = read_one(
        BAD_COLUMNS, csv_columns=CsvColumns(conversation="ID", speaker="Who", text="what")
    )
    assert report.rejected == []
    assert transcripts == [
        Transcript(
            id="1",
            source=str(BAD_COLUMNS),
            line=2,
            turns=(Turn("user", "My order is late."), Turn("assistant", "It arrives today.")),
        )
    ]


def test_csv_explicit_column_wins_over_a_detected_one(tmp_path):
    path = write(tmp_path / "t.csv", "ticket,role,text,agent_note\n1,user,Hi,x\n1,agent,Hello,Internal\n")
    transcripts, _ = read_one(path, csv_columns=CsvColumns(text="Agent Note"))
    assert [turn.content for turn in transcripts[0].turns] == ["x", "Internal"]


def test_text_reads_prefixes_multiline_turns_and_blank_line_separators():
    transcripts, report = read_one(TEXT)
    assert transcripts == [
        Transcript(
            id="transcripts.txt:1",
            source=str(TEXT),
            line=1,
            turns=(
                Turn("user", "Hi, I was charged twice."),
                Turn("assistant", "Sorry about that!\nCould you send me the invoice number?"),
                Turn("user", "INV-42\nand INV-43"),
                Turn("assistant", "Refunded both."),
            ),
        ),
        Transcript(
            id="transcripts.txt:9",
            source=str(TEXT),
            line=9,
            turns=(
                Turn("system", "You are the support agent of Example Shop."),
                Turn("user", "Do you ship to Norway?"),
                Turn("assistant", "Yes, within 5 days."),
            ),
        ),
    ]
    assert report.summary() == "read 2 conversations from 1 file: kept 2, rejected 0"


def test_format_option_overrides_the_extension(tmp_path):
    path = tmp_path / "chat.log"
    shutil.copy(TEXT, path)
    assert len(read_one(path, format="text")[0]) == 2
    with pytest.raises(TranscriptError, match="cannot tell the transcript format"):
        read_one(path)
    with pytest.raises(TranscriptError, match="unknown transcript format 'xml'"):
        read_one(path, format="xml")


# --- inputs: folders, globs, .gz -------------------------------------------------------------


def test_folders_are_read_recursively_and_globs_are_expanded(tmp_path):
    shutil.copy(TEXT, tmp_path / "a.txt")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "b.jsonl.gz").write_bytes(gzip.compress(CHATS.read_bytes()))
    shutil.copy(HELPDESK, tmp_path / "sub" / "c.CSV")
    write(tmp_path / "notes.md", "not a transcript")
    transcripts, report = read_transcripts([tmp_path])
    assert [Path(f).name for f in report.files] == ["a.txt", "c.CSV", "b.jsonl.gz"]
    assert report.summary().startswith("read 6 conversations from 3 files: kept 6, rejected 0")
    globbed = find_transcript_files([str(tmp_path / "**" / "*.gz"), str(tmp_path / "*.txt")])
    assert [p.name for p in globbed] == ["b.jsonl.gz", "a.txt"]
    assert len(transcripts) == 6


def test_a_file_named_twice_is_read_once_and_a_single_path_is_accepted():
    assert find_transcript_files([CHATS, str(DATA / "chats.*")]) == [CHATS]
    transcripts, _ = read_transcripts(str(CHATS))
    assert transcripts == CHATS_EXPECTED


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: str(d / "missing.jsonl"), "missing.jsonl: no such file or folder"),
        (lambda d: str(d / "*.jsonl"), r"\*.jsonl: pattern matches no transcript file"),
        (lambda d: str(d), "folder matches no transcript file"),
    ],
)
def test_an_input_that_names_nothing_raises(tmp_path, make, message):
    with pytest.raises(TranscriptError, match=message):
        read_transcripts([make(tmp_path)])


def test_no_inputs_raises():
    with pytest.raises(TranscriptError, match="no transcript inputs"):
        read_transcripts([])


# --- rejections --------------------------------------------------------------------------------


def test_every_rejection_is_reported_with_file_line_and_reason():
    transcripts, report = read_one(MALFORMED)
    assert [t.id for t in transcripts] == ["ok"]
    assert [(r.source, r.line, r.reason) for r in report.rejected] == [
        (str(MALFORMED), 2, "bad-json"),
        (str(MALFORMED), 3, "unknown-role"),
        (str(MALFORMED), 4, "no-agent-turn"),
        (str(MALFORMED), 5, "empty-text"),
        (str(MALFORMED), 6, "missing-field"),
    ]
    assert "Expecting ',' delimiter" in report.rejected[0].detail
    assert "'manager'" in report.rejected[1].detail
    assert (report.read, report.kept) == (6, 1)


def test_summary_counts_reasons_and_lists_each_rejection():
    _, report = read_one(MALFORMED)
    lines = report.summary().splitlines()
    assert lines[0] == (
        "read 6 conversations from 1 file: kept 1, rejected 5 "
        "(bad-json 1, empty-text 1, missing-field 1, no-agent-turn 1, unknown-role 1)"
    )
    assert lines[1].startswith(f"{MALFORMED}:2: bad-json: ")
    assert lines[3] == f"{MALFORMED}:4: no-agent-turn: conversation 'unanswered' has no agent turn " + (
        "(a conversation needs at least one)"
    )
    assert len(lines) == 6
    assert report.by_reason() == dict.fromkeys(
        ["bad-json", "empty-text", "missing-field", "no-agent-turn", "unknown-role"], 1
    )


def test_by_reason_puts_the_most_frequent_first():
    report = ReadReport(files=["a"], read=3, kept=0)
    report.rejected = [Rejection("a", n, reason, "") for n, reason in enumerate(["x", "y", "y"], 1)]
    assert list(report.by_reason().items()) == [("y", 2), ("x", 1)]


def test_strict_raises_at_the_first_rejection():
    first = rf"^{re.escape(str(MALFORMED))}:2: bad-json: Expecting"
    with pytest.raises(TranscriptError, match=first) as caught:
        read_one(MALFORMED, strict=True)
    assert isinstance(caught.value, ChatbotError)
    assert "strict=True" in str(caught.value)


def test_csv_rejects_unknown_speakers_and_rows_without_a_conversation(tmp_path):
    path = write(
        tmp_path / "t.csv",
        "ticket_id,author,comment\n"
        "1,customer,Hi\n"
        "1,manager,Hello\n"
        ",agent,Orphan\n"
        ",,\n"
        "2,customer,Only me\n"
        "3,agent,Hello\n",
    )
    transcripts, report = read_one(path)
    assert [t.id for t in transcripts] == ["3"]
    assert [(r.line, r.reason) for r in report.rejected] == [
        (4, "missing-field"),
        (3, "unknown-role"),
        (6, "no-agent-turn"),
    ]
    assert "speaker 'manager'" in report.rejected[1].detail
    assert report.read == 4


def test_text_line_without_a_speaker_is_rejected(tmp_path):
    path = write(tmp_path / "t.txt", "Ticket 99\nCustomer: Hi\nAgent: Hello\n\nAgent: Bye\n")
    transcripts, report = read_one(path)
    assert [t.id for t in transcripts] == ["t.txt:5"]
    assert [(r.line, r.reason) for r in report.rejected] == [(1, "no-speaker")]


def test_jsonl_wrong_shapes_are_missing_field(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        '[1, 2]\n{"turns": []}\n{"messages": ["hi"]}\n{"messages": [{"role": "user", "content": ["x"]}]}\n',
    )
    _, report = read_one(path, format="jsonl")
    assert [(r.line, r.reason) for r in report.rejected] == [(n, "missing-field") for n in (1, 2, 3, 4)]
    assert 'keys "turns"' in report.rejected[1].detail


# --- bad files ---------------------------------------------------------------------------------


def test_csv_missing_columns_names_found_and_expected():
    with pytest.raises(TranscriptError) as caught:
        read_one(BAD_COLUMNS)
    message = str(caught.value)
    assert "cannot find the conversation and speaker and text column(s)" in message
    assert "found columns: id, who, what" in message
    assert "speaker: one of speaker, role, author" in message
    assert 'CsvColumns(conversation="<column>", speaker="<column>", text="<column>")' in message


def test_csv_explicit_column_that_does_not_exist(tmp_path):
    with pytest.raises(TranscriptError, match=r"no column 'author' \(CsvColumns.speaker\); found columns"):
        read_one(HELPDESK, csv_columns=CsvColumns(speaker="author"))


def test_empty_file_raises(tmp_path):
    path = write(tmp_path / "empty.jsonl", "\n  \n")
    with pytest.raises(TranscriptError, match=r"empty\.jsonl: the file is empty"):
        read_one(path)


def test_non_utf8_file_names_the_line_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Customer: hello\nAgent: café\n".encode("latin-1"))
    with pytest.raises(TranscriptError) as caught:
        read_one(path)
    assert str(caught.value).startswith(f"{path}:2: not UTF-8 text: byte 0xe9 at offset 26")
    assert "re-save the file as UTF-8" in str(caught.value)


def test_gz_file_that_is_not_gzip_raises(tmp_path):
    path = tmp_path / "chats.jsonl.gz"
    shutil.copy(CHATS, path)
    with pytest.raises(TranscriptError, match=r"named \.gz but is not a valid gzip file"):
        read_one(path)


def test_broken_json_array_raises_with_the_line(tmp_path):
    path = write(tmp_path / "t.json", '[\n{"messages": []},\n{"messages": [}\n]')
    with pytest.raises(TranscriptError, match=r"t.json:3: not valid JSON"):
        read_one(path)
