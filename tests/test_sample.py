"""The synthetic sample corpus: determinism, coverage, shape, echoed values, PII, typos, the file, the CLI."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from training.demo.corpus import (
    CATALOGUE,
    INTENT_TABLE,
    INTENTS,
    NAMES,
    generate_conversations,
    summary,
    write_sample,
)
from training.transcripts.readers import read_transcripts
from training.transcripts.redact import find_pii

ROOT = Path(__file__).resolve().parents[1]

ORDER_RE = re.compile(r"#\d{5}\b|\bA-\d{5}\b")
CODE_RE = re.compile(r"\b[A-Z]{3,}\d{2}\b")
NAME_RE = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, NAMES)) + r")(?!\w)")
PRODUCT_RE = re.compile("|".join(re.escape(p.name) for p in CATALOGUE))
# Reserved example domains and fictional phone ranges only (Ofcom's drama range, the US 555-01xx).
FAKE_PII = re.compile(r"[a-z]+\.[a-z]+@example\.(?:com|org|net)|\+44 7700 900\d{3}|\+1 202 555 01\d{2}")

# Misspellings that no template contains on purpose ("thx" and "dont" are how some people write).
TELLTALE_TYPOS = {
    "recieve", "recieved", "adress", "definately", "becuase", "pakage", "delivary", "tommorow", "wich",
    "oder", "acount", "pasword", "allready", "arived", "stil", "realy", "refnd", "wrng",
}  # fmt: skip

# The topics the corpus must cover, by intent name.
REQUIRED_INTENTS = {
    "order_status", "track_order", "delivery_delay", "change_address", "cancel_order", "return_item",
    "return_label", "refund_status", "refund_amount", "exchange_item", "damaged_item", "wrong_item",
    "missing_item", "payment_failed", "charged_twice", "payment_methods", "discount_code",
    "invoice_request", "create_account", "password_reset", "reset_email_missing", "change_email",
    "delete_account", "restock", "sizing", "product_specs", "shipping_countries", "shipping_costs",
    "contact_hours", "complaint", "greeting", "thanks", "human_agent", "gift_wrap", "warranty",
}  # fmt: skip


@pytest.fixture(scope="module")
def corpus() -> list:
    """The demo-sized corpus, generated once for the module."""
    return generate_conversations(2000, seed=0)


def turns(conversations, role: str) -> list[str]:
    return [m["content"] for c in conversations for m in c["messages"] if m["role"] == role]


def fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


# --- determinism and coverage ---------------------------------------------------------------


def test_the_same_seed_gives_the_same_corpus_and_another_seed_another():
    first = generate_conversations(300, seed=7)
    assert first == generate_conversations(300, seed=7)
    other = generate_conversations(300, seed=8)
    assert [c["messages"] for c in first] != [c["messages"] for c in other]


def test_global_random_state_is_left_alone():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_conversations(100, seed=1)
    assert random.random() == expected


def test_at_least_thirty_intents_covering_the_required_topics():
    assert len(INTENTS) >= 30
    assert len(set(INTENTS)) == len(INTENTS)
    assert set(INTENTS) >= REQUIRED_INTENTS


def test_every_intent_appears_once_there_are_enough_conversations(corpus):
    assert {c["intent"] for c in generate_conversations(len(INTENTS), seed=5)} == set(INTENTS)
    counts = Counter(c["intent"] for c in corpus)
    assert set(counts) == set(INTENTS)
    assert min(counts.values()) >= 15  # enough of the rarest intent to learn it


def test_small_counts():
    assert generate_conversations(0) == []
    assert len(generate_conversations(3, seed=2)) == 3


@pytest.mark.parametrize(
    "options",
    [{"n": -1}, {"n": 2.5}, {"n": True}, {"n": 5, "pii_rate": 1.5}, {"n": 5, "pii_rate": math.nan}],
)
def test_bad_options_are_refused(options):
    n = options.pop("n")
    with pytest.raises(ValueError, match="must be"):
        generate_conversations(n, **options)


# --- the shape of a conversation ------------------------------------------------------------


def test_every_conversation_is_well_formed(corpus):
    assert len({c["id"] for c in corpus}) == len(corpus)
    for conversation in corpus:
        assert set(conversation) == {"id", "intent", "messages"}
        roles = [m["role"] for m in conversation["messages"]]
        assert roles[-1] == "assistant", conversation
        assert all(a != b for a, b in itertools.pairwise(roles)), conversation  # roles alternate
        assert 1 <= roles.count("user") <= 4, conversation
        for message in conversation["messages"]:
            assert message["content"] and message["content"] == message["content"].strip(), conversation


def test_conversations_start_with_either_side(corpus):
    first = Counter(c["messages"][0]["role"] for c in corpus)
    assert first["assistant"] > 0.1 * len(corpus) and first["user"] > 0.5 * len(corpus)


def test_agent_replies_are_short_and_conversations_fit_a_small_window(corpus):
    words = [len(text.split()) for text in turns(corpus, "assistant")]
    assert max(words) <= 45
    assert sum(words) / len(words) <= 25
    longest = max(sum(len(m["content"]) for m in c["messages"]) for c in corpus)
    assert longest <= 700  # well inside 256 tokens of a BPE tokenizer trained on this corpus


def test_each_branch_has_a_few_agent_variants_and_many_customer_phrasings():
    for intent in INTENT_TABLE:
        for branch in intent.branches:
            assert 2 <= len(branch.replies) <= 3, intent.name
            assert len(branch.requests) >= 4, intent.name
        assert sum(len(b.requests) for b in intent.branches) >= 6, intent.name


def test_agent_replies_use_only_values_the_customer_gave():
    for intent in INTENT_TABLE:
        for branch in intent.branches:
            used = set().union(*(fields(t) for t in (*branch.replies, *branch.ask, branch.sorry)))
            for request in branch.requests:
                given = fields(request) | ({branch.asks_for} if branch.ask else set())
                given |= {"spec"} if "product" in given else set()  # the catalogue's answer
                assert used <= given, (intent.name, request, used - given)


# --- values echoed from the customer --------------------------------------------------------


def test_every_value_the_agent_mentions_came_from_the_customer_before(corpus):
    for conversation in corpus:
        said = ""
        for message in conversation["messages"]:
            if message["role"] == "user":
                said += "\n" + message["content"]
                continue
            for pattern in (ORDER_RE, CODE_RE, NAME_RE, PRODUCT_RE):
                for value in pattern.findall(message["content"]):
                    assert value in said, (value, conversation)


def test_the_order_number_the_customer_gives_is_confirmed_by_the_agent(corpus):
    checked = 0
    for conversation in corpus:
        if conversation["intent"] not in ("order_status", "track_order", "cancel_order", "return_item"):
            continue
        customer = " ".join(m["content"] for m in conversation["messages"] if m["role"] == "user")
        agent = " ".join(m["content"] for m in conversation["messages"] if m["role"] == "assistant")
        numbers = ORDER_RE.findall(customer)
        assert numbers, conversation  # given in the request, or when the agent asked for it
        assert all(number in agent for number in numbers), conversation
        checked += 1
    assert checked > 200


def test_the_agent_asks_for_a_missing_order_number_and_confirms_it(corpus):
    asked = [
        c
        for c in corpus
        if c["intent"] == "order_status" and not ORDER_RE.search(c["messages"][0]["content"])
    ]
    flows = 0
    for conversation in asked:
        contents = [m["content"] for m in conversation["messages"]]
        for index, text in enumerate(contents[:-2]):
            if "order number" in text and conversation["messages"][index]["role"] == "assistant":
                number = ORDER_RE.search(contents[index + 1])
                assert number and number.group() in contents[index + 2], conversation
                flows += 1
    assert flows > 20


# --- personal data and typos ----------------------------------------------------------------


def test_no_personal_data_by_default(corpus):
    texts = turns(corpus, "user") + turns(corpus, "assistant")
    assert [(text, finding) for text in texts for finding in find_pii(text)] == []


def test_pii_rate_one_puts_fake_pii_in_every_conversation_and_changes_nothing_else():
    plain = generate_conversations(300, seed=4)
    with_pii = generate_conversations(300, seed=4, pii_rate=1.0)
    kinds: Counter[str] = Counter()
    for before, after in zip(plain, with_pii, strict=True):
        assert before["id"] == after["id"] and before["intent"] == after["intent"]
        findings = []
        for old, new in zip(before["messages"], after["messages"], strict=True):
            assert new["content"].startswith(old["content"])
            if new["role"] == "assistant":
                assert new == old  # the agent never repeats it
            findings += find_pii(new["content"])
        assert len(findings) == 1, after
        kinds[findings[0].kind] += 1
        assert FAKE_PII.fullmatch(findings[0].text), findings[0]
    assert set(kinds) == {"email", "phone"}


def test_pii_rate_is_a_share_of_conversations():
    conversations = generate_conversations(1000, seed=9, pii_rate=0.2)
    share = sum(any(find_pii(t) for t in turns([c], "user")) for c in conversations) / len(conversations)
    assert 0.15 < share < 0.25


def test_some_customer_turns_have_typos(corpus):
    customer = turns(corpus, "user")
    with_typos = [t for t in customer if TELLTALE_TYPOS & set(re.findall(r"[a-z]+", t.lower()))]
    assert 0.005 < len(with_typos) / len(customer) < 0.1


def test_customers_vary_more_than_agents(corpus):
    customer, agent = turns(corpus, "user"), turns(corpus, "assistant")
    requests = [c["messages"][1 if c["messages"][0]["role"] == "assistant" else 0]["content"] for c in corpus]
    print(summary(corpus))
    print(f"first customer requests: {len(requests)}, distinct {len(set(requests))}")
    assert len(set(customer)) > 0.5 * len(customer)
    assert len(set(requests)) > 0.75 * len(requests)
    # Agents repeat themselves: without their slot values, few distinct replies remain.
    shapes = {ORDER_RE.sub("<order>", PRODUCT_RE.sub("<product>", text)) for text in agent}
    assert len(shapes) < len(set(customer)) / 2


# --- the file and the command line ----------------------------------------------------------


def test_the_written_file_is_read_back_with_no_rejection(tmp_path):
    path = write_sample(tmp_path / "data" / "sample.jsonl", n=400, seed=3)
    assert path == tmp_path / "data" / "sample.jsonl"
    transcripts, report = read_transcripts([path])
    assert report.rejected == [] and report.read == report.kept == 400
    expected = generate_conversations(400, seed=3)
    assert [t.id for t in transcripts] == [c["id"] for c in expected]
    for transcript, conversation in zip(transcripts, expected, strict=True):
        assert [(turn.role, turn.content) for turn in transcript.turns] == [
            (m["role"], m["content"]) for m in conversation["messages"]
        ]


def test_writing_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "sample.jsonl"
    path.write_text("old\n", encoding="utf-8")
    write_sample(path, n=40, seed=1)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["id"] == "sample-1-00000"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.jsonl"]  # no temporary file left
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "sample.jsonl").mkdir()  # a folder where the file should go: os.replace fails
    with pytest.raises(OSError):
        write_sample(folder / "sample.jsonl", n=5)
    assert [p.name for p in folder.iterdir()] == ["sample.jsonl"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.demo.corpus", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_line_writes_the_same_file_as_the_api(tmp_path):
    out = tmp_path / "cli.jsonl"
    result = run_cli(str(out), "--conversations", "60", "--seed", "2", "--pii-rate", "0.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: 60 conversations, ")
    assert "distinct" in result.stdout and len(result.stdout.splitlines()) == 1
    api = write_sample(tmp_path / "api.jsonl", n=60, seed=2, pii_rate=0.5)
    assert out.read_bytes() == api.read_bytes()


def test_the_command_line_refuses_a_bad_rate(tmp_path):
    result = run_cli(str(tmp_path / "x.jsonl"), "--pii-rate", "2")
    assert result.returncode == 2
    assert "pii_rate must be between 0 and 1" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()
