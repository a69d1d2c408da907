"""PII redaction: each kind's positives and hard negatives, checksums, overlaps, the labelled set."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from chatbot.errors import ChatbotError
from training.transcripts.redact import (
    KINDS,
    PLACEHOLDERS,
    Finding,
    Redactor,
    evaluate,
    find_pii,
    format_evaluation,
    iban_valid,
    luhn_valid,
    main,
    redact,
)

LABELLED = Path(__file__).parent / "data" / "pii_labelled.jsonl"


def found(text: str) -> list[tuple[str, str]]:
    """The (kind, text) of every finding, in order."""
    return [(f.kind, f.text) for f in find_pii(text)]


# --- checksums ---------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["4111111111111111", "378282246310005", "6011111111111117", "0"])
def test_luhn_accepts_valid_numbers(number):
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "", "4111-1111"])
def test_luhn_rejects_invalid_numbers(number):
    assert not luhn_valid(number)


@pytest.mark.parametrize("iban", ["DE89370400440532013000", "gb82 west 1234 5698 7654 32", "NO9386011117947"])
def test_iban_checksum_accepts_valid_ibans(iban):
    assert iban_valid(iban)


@pytest.mark.parametrize(
    "iban",
    ["DE89370400440532013001", "DE8937040044", "1289370400440532013000", "DE89 3704 0044 0532 0130 0!"],
)
def test_iban_checksum_rejects_invalid_ibans(iban):
    assert not iban_valid(iban)


# --- email -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "email"),
    [
        ("mail john.doe@example.com, thanks", "john.doe@example.com"),
        ("maria.garcia+orders@gmail.com", "maria.garcia+orders@gmail.com"),
        ("at k.n@mail.company.co.uk.", "k.n@mail.company.co.uk"),
        ("<o'brien@example.ie>", "o'brien@example.ie"),
    ],
)
def test_email_positives(text, email):
    assert found(text) == [("email", email)]


@pytest.mark.parametrize("text", ["admin@localhost", "icon@2x.png", "@ExampleShop", "...@gmail.com"])
def test_email_negatives(text):
    assert found(text) == []


# --- card --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "card"),
    [
        ("card 4111 1111 1111 1111, exp 12/26", "4111 1111 1111 1111"),
        ("paid with 5500-0000-0000-0004", "5500-0000-0000-0004"),
        ("amex 3782 822463 10005", "3782 822463 10005"),
        ("visa 4222222222222 expired", "4222222222222"),
        ("card no is 4111111111111111", "4111111111111111"),
    ],
)
def test_card_positives(text, card):
    assert found(text) == [("card", card)]


@pytest.mark.parametrize(
    "text",
    [
        "order 1234 5678 9012 3456",  # fails Luhn
        "number 4111111111111112",  # fails Luhn
        "Serial number 4532015112830367",  # passes Luhn, but an id
        "Tracking: 9400 1118 9922 3344 5566 77",
        "4111 1111 1111 111",  # too short
    ],
)
def test_card_negatives(text):
    assert all(kind != "card" for kind, _ in found(text))


# --- IBAN --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "iban"),
    [
        ("IBAN DE89 3704 0044 0532 0130 00 for the refund", "DE89 3704 0044 0532 0130 00"),
        ("refund to GB82WEST12345698765432", "GB82WEST12345698765432"),
        ("BE68 5390 0754 7034 then more", "BE68 5390 0754 7034"),
        ("ie29 aibk 9311 5212 3456 78 lowercase", "ie29 aibk 9311 5212 3456 78"),
    ],
)
def test_iban_positives(text, iban):
    assert found(text) == [("iban", iban)]


@pytest.mark.parametrize(
    "text",
    ["IBAN DE89 3704 0044 0532 0130 01", "GB82WEST12345698765433", "code AB12 CDEF 3456 7890"],
)
def test_iban_lookalikes_are_nothing(text):
    assert found(text) == []


# --- phone -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    [
        "(555) 123-4567",
        "555-123-4567",
        "+44 20 7946 0958",
        "06 12 34 56 78",
        "+49 (0)30 123456",
        "+31612345678",
        "555.867.5309",
        "0612345678",
    ],
)
def test_phone_positives(phone):
    assert found(f"please call {phone} tomorrow") == [("phone", phone)]


def test_a_bare_number_is_a_phone_only_after_a_phone_word():
    assert found("call me 5551234567") == [("phone", "5551234567")]
    assert found("it was 5551234 I think") == []


@pytest.mark.parametrize(
    "text",
    [
        "Where is my order 12345678?",
        "ticket 98765432 still open",
        "invoice #20240115 is wrong",
        "Order # 55512345 arrived",
        "delivered 2024-05-03, opened 03/05/2024",
        "arrived 03.05.2024 at 14:30",
        "the update on 2024-05-03 14:30",
        "total 1,299.00 then 1.299,00 €",
        "I paid $1 250 000",
        "app version 10.0.19045",
        "ZIP 94105-1234",
        "sizes 10 12 14 16",
        "ISBN 978-3-16-148410-0",
        "subscription 55-1234-8899",
    ],
)
def test_phone_negatives(text):
    assert found(text) == []


# --- IP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    [
        "192.168.1.10",
        "0.0.0.0",
        "255.255.255.0",
        "2001:db8:85a3::8a2e:370:7334",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "::1",
        "::ffff:192.0.2.128",
        "fe80::1ff:fe23:4567:890a",
    ],
)
def test_ip_positives(ip):
    assert found(f"blocked from {ip}.") == [("ip", ip)]


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3",
        "999.1.1.1",
        "256.1.1.1",
        "updated to v2.3.1.0",
        "Build 10.0.19045.2965",
        "at 12:30:45 UTC",
        "MAC 00:1A:2B:3C:4D:5E",
        "std::vector",
    ],
)
def test_ip_negatives(text):
    assert found(text) == []


# --- overlaps, redaction, counts ---------------------------------------------------------------


def test_an_ibans_digits_are_not_also_a_phone_or_a_card():
    assert found("NL91 ABNA 0417 1643 00") == [("iban", "NL91 ABNA 0417 1643 00")]
    assert found("NL91 ABNA 0417 1643 01") == []  # bad checksum: still not a phone


def test_earlier_kinds_win_overlaps():
    # the local part of this address is also a valid phone and card shape
    assert found("4111111111111111@example.com") == [("email", "4111111111111111@example.com")]


def test_findings_are_sorted_and_carry_their_span():
    text = "ip 10.1.2.3, mail a@b.io, card 4111 1111 1111 1111"
    findings = find_pii(text)
    assert [f.kind for f in findings] == ["ip", "email", "card"]
    assert all(text[f.start : f.end] == f.text for f in findings)
    assert findings[0] == Finding("ip", 3, 11, "10.1.2.3")


def test_redact_replaces_with_placeholders_and_counts():
    text = "mail a@b.io or c@d.org, call +44 20 7946 0958, IBAN GB82WEST12345698765432"
    redacted, counts = redact(text)
    assert redacted == "mail <EMAIL> or <EMAIL>, call <PHONE>, IBAN <IBAN>"
    assert counts == Counter({"email": 2, "phone": 1, "iban": 1})


def test_placeholders_cover_every_kind():
    assert set(PLACEHOLDERS) == set(KINDS)
    assert PLACEHOLDERS["card"] == "<CARD>" and PLACEHOLDERS["ip"] == "<IP>"


def test_redact_leaves_clean_text_alone():
    assert redact("Where is order 12345678?") == ("Where is order 12345678?", Counter())


def test_redactor_accumulates_counts():
    redactor = Redactor()
    assert redactor("card 4111 1111 1111 1111") == "card <CARD>"
    assert redactor("ip 10.0.0.1 and ::1") == "ip <IP> and <IP>"
    assert redactor("nothing here") == "nothing here"
    assert redactor.counts == Counter({"card": 1, "ip": 2})


# --- evaluation --------------------------------------------------------------------------------


def test_labelled_set_scores_high(capsys):
    result = evaluate(LABELLED)
    with capsys.disabled():
        print("\n" + format_evaluation(result))
    assert result["all"]["precision"] >= 0.95 and result["all"]["recall"] >= 0.95
    for kind in KINDS:
        assert result[kind]["support"] >= 15, kind
        assert result[kind]["precision"] >= 0.9 and result[kind]["recall"] >= 0.9, (kind, result[kind])


def test_evaluate_counts_misses_and_false_alarms(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"text": "a@b.io and order 12345678", "pii": [{"kind": "email", "text": "a@b.io"},'
        ' {"kind": "phone", "text": "12345678"}]}\n{"text": "ip 10.0.0.1", "pii": []}\n',
        encoding="utf-8",
    )
    result = evaluate(path)
    assert result["email"] == {"precision": 1.0, "recall": 1.0, "support": 1.0}
    assert result["phone"]["recall"] == 0.0 and result["ip"]["precision"] == 0.0
    assert result["all"]["precision"] == 0.5 and result["all"]["recall"] == 0.5
    assert format_evaluation(result).splitlines()[0] == "| kind | precision | recall | support |"


def test_evaluate_names_a_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "hi", "pii": [{"kind": "name", "text": "hi"}]}\n', encoding="utf-8")
    with pytest.raises(ChatbotError, match=r"bad\.jsonl:1"):
        evaluate(path)


def test_main_prints_the_table(capsys):
    assert main([str(LABELLED)]) == 0
    assert "| all |" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["/nonexistent/set.jsonl"]) == 1


def test_long_digit_runs_stay_linear():
    # a card window holds at most 19 digits, so a run of thousands of groups is not quadratic
    started = time.perf_counter()
    assert find_pii("1 " * 2000 + "4-" * 2000) == []
    assert time.perf_counter() - started < 2.0
