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


# --- out-of-scope labels -----------------------------------------------------------------------

OFF = "What's the weather like?"
DECLINE = "I can only help with the shop."


def labels(transcripts: list[Transcript]) -> list[list[tuple[str, bool]]]:
    return [[(turn.role, turn.out_of_scope) for turn in t.turns] for t in transcripts]


def test_jsonl_labels_a_message_or_every_customer_turn_of_a_conversation(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        '{"messages": [{"role": "user", "content": "Where is my order?"},'
        ' {"role": "agent", "content": "Soon."},'
        f' {{"role": "user", "content": "{OFF}", "out_of_scope": true}},'
        f' {{"role": "agent", "content": "{DECLINE}"}}]}}\n'
        f'{{"out_of_scope": true, "messages": [{{"role": "user", "content": "{OFF}"}},'
        f' {{"role": "agent", "content": "{DECLINE}"}}, {{"role": "user", "content": "Recipes?"}},'
        ' {"role": "agent", "content": "No."}]}\n'
        '{"out_of_scope": false, "messages": [{"role": "user", "content": "Hi", "out_of_scope": false},'
        ' {"role": "agent", "content": "Hello"}]}\n',
    )
    transcripts, report = read_one(path)
    assert not report.rejected
    assert labels(transcripts) == [
        [("user", False), ("assistant", False), ("user", True), ("assistant", False)],
        [("user", True), ("assistant", False), ("user", True), ("assistant", False)],
        [("user", False), ("assistant", False)],
    ]
    assert report.out_of_scope == 3
    assert report.summary().splitlines()[0].endswith("; 3 customer turns labelled out of scope")


def test_csv_reads_an_out_of_scope_column_found_by_name_or_named(tmp_path):
    rows = (
        "ticket_id,author,comment,{column}\n"
        "1,customer,Where is my order?,\n"
        f"1,agent,Soon.,no\n"
        f"2,customer,{OFF},Yes\n"
        f"2,agent,{DECLINE},0\n"
        "2,customer,And recipes?,TRUE\n"
        "2,agent,No.,false\n"
    )
    path = write(tmp_path / "t.csv", rows.format(column="Out of scope"))
    transcripts, report = read_one(path)
    assert not report.rejected
    assert labels(transcripts) == [
        [("user", False), ("assistant", False)],
        [("user", True), ("assistant", False), ("user", True), ("assistant", False)],
    ]
    named = write(tmp_path / "named.csv", rows.format(column="scope_label"))
    transcripts, _ = read_one(named, csv_columns=CsvColumns(out_of_scope="Scope Label"))
    assert labels(transcripts)[1][0] == ("user", True)


def test_text_reads_the_out_of_scope_marker(tmp_path):
    path = write(
        tmp_path / "t.txt",
        f"Customer: Where is my order?\nAgent: Soon.\nCustomer [out of scope]: {OFF}\nand sports?\n"
        f"Agent: {DECLINE}\n\nCUSTOMER [Out-of-Scope]  : {OFF}\nAgent: {DECLINE}\n",
    )
    transcripts, report = read_one(path)
    assert not report.rejected
    assert labels(transcripts) == [
        [("user", False), ("assistant", False), ("user", True), ("assistant", False)],
        [("user", True), ("assistant", False)],
    ]
    assert transcripts[0].turns[2].content == f"{OFF}\nand sports?"


def test_merged_customer_turns_are_out_of_scope_when_any_part_was(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        '{"messages": [{"role": "user", "content": "Hi"},'
        f' {{"role": "user", "content": "{OFF}", "out_of_scope": true}},'
        ' {"role": "agent", "content": "No."}]}\n',
    )
    transcripts, _ = read_one(path)
    assert transcripts[0].turns[0] == Turn("user", f"Hi\n{OFF}", out_of_scope=True)


@pytest.mark.parametrize(
    ("name", "text", "line", "detail"),
    [
        (
            "t.jsonl",
            '{"messages": [{"role": "user", "content": "Hi"}, {"role": "agent", "content": "Hello"}]}\n'
            '{"messages": [{"role": "user", "content": "x", "out_of_scope": "yes"}, '
            '{"role": "agent", "content": "y"}]}\n',
            2,
            "message 1 has \"out_of_scope\": 'yes'; expected true or false",
        ),
        (
            "t.jsonl",
            '{"out_of_scope": 1, "messages": [{"role": "user", "content": "x"},'
            ' {"role": "agent", "content": "y"}]}\n',
            1,
            'the conversation\'s "out_of_scope" is 1; expected true or false',
        ),
        (
            "t.jsonl",
            '{"messages": [{"role": "user", "content": "x"}, '
            '{"role": "agent", "content": "y", "out_of_scope": true}]}\n',
            1,
            "message 2 is labelled out of scope, but only a customer turn can be",
        ),
        (
            "t.csv",
            "ticket,role,text,out_of_scope\n1,customer,Hi,\n1,agent,Hello,\n2,customer,x,maybe\n2,agent,y,\n",
            4,
            "conversation '2': out-of-scope cell 'maybe'; expected true or false",
        ),
        (
            "t.csv",
            "ticket,role,text,out_of_scope\n1,customer,Hi,\n1,agent,Hello,yes\n",
            3,
            "a 'agent' row is labelled out of scope, but only a customer turn can be",
        ),
        (
            "t.txt",
            "Customer: Hi\nAgent: Hello\n\nCustomer [off topic]: x\nAgent: y\n",
            4,
            "line 4 has the marker [off topic]; the one marker is [out of scope]",
        ),
        (
            "t.txt",
            "Customer: Hi\nAgent [out of scope]: Hello\n",
            2,
            "line 2 is labelled out of scope, but only a customer turn can be",
        ),
    ],
    ids=[
        "jsonl value",
        "jsonl conversation",
        "jsonl agent",
        "csv value",
        "csv agent",
        "text marker",
        "text agent",
    ],
)
def test_a_malformed_label_rejects_its_conversation_with_file_and_line(tmp_path, name, text, line, detail):
    path = write(tmp_path / name, text)
    transcripts, report = read_one(path)
    assert [(r.source, r.line, r.reason) for r in report.rejected] == [(str(path), line, "bad-label")]
    assert detail in report.rejected[0].detail
    assert len(transcripts) == report.kept == report.read - 1
    with pytest.raises(TranscriptError, match=rf"^{re.escape(str(path))}:{line}: bad-label: "):
        read_one(path, strict=True)
