"""`chatbot eval` and training.evaluation.evaluate on the tiny model: real transcript files, the real
ONNX graph.

The tiny model's replies are gibberish; these tests check the mechanics (perplexity equals the
PyTorch loss, the metrics, the baseline, the report and the command), not the quality.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot.card import read_card
from chatbot.errors import ModelFolderError
from chatbot.folder import ModelFolder
from chatbot.generation import OnnxGenerator
from chatbot.scope import ScopeIndex
from chatbot.types import GenerationConfig
from training.card import update_card
from training.dataset.examples import ConversationEncoder, Example, messages_of, split_ids
from training.evaluation.evaluate import (
    EvaluationError,
    HandoverRecord,
    ReplyCase,
    RetrievalBaseline,
    Thresholds,
    corpus_bleu,
    evaluate_files,
    evaluate_model,
    handover_figures,
    measure_perplexity,
    model_reply,
    reply_cases,
    rouge_l,
    spread,
    words,
)
from training.transcripts.readers import Transcript, Turn

ROOT = Path(__file__).resolve().parents[1]
TRANSCRIPTS = ROOT / "tests" / "data" / "transcripts"
CHATS = TRANSCRIPTS / "chats.jsonl"
TRAIN_FILES = (TRANSCRIPTS / "transcripts.txt", TRANSCRIPTS / "helpdesk.csv")
SHOP = "You are the support agent of Example Shop."


def conversation(cid: str, *turns: tuple[str, str]) -> Transcript:
    return Transcript(cid, "test", 1, tuple(Turn(role, text) for role, text in turns))


TRAIN = [
    conversation(
        "t-1",
        ("user", "Where is my order?"),
        ("assistant", "Could you give me the order number?"),
        ("user", "It is 12345."),
        ("assistant", "It ships tomorrow."),
    ),
    conversation(
        "t-2",
        ("user", "I want to return shoes."),
        ("assistant", "How many pairs?"),
        ("user", "It is 2."),
        ("assistant", "Print two return labels."),
    ),
    conversation("t-3", ("user", "Hello"), ("assistant", "Hello! How can I help you today?")),
    conversation("t-4", ("user", "Thanks"), ("assistant", "Hello! How can I help you today?")),
]
LONG_CHAT = [
    ("user" if i % 2 == 0 else "assistant", f"Message {i}: où est mon colis 📦 ?") for i in range(24)
]
TEST = [
    conversation(
        "order",
        ("system", SHOP),
        ("user", "Where is my order?"),
        ("assistant", "Could you give me the order number?"),
        ("user", "It is 12345."),
        ("assistant", "It ships tomorrow."),
    ),
    conversation(
        "unicode", ("user", "注文した商品がまだ届きません。"), ("assistant", "Спасибо! Ça arrive demain 😊")
    ),
    conversation(
        "greeting", ("assistant", "Welcome!"), ("user", "Hi"), ("assistant", "Hello! How can I help?")
    ),
    conversation("long", *LONG_CHAT),  # longer than the 256-token window: windows, dropped turns
]


@pytest.fixture(scope="module")
def evaluation(tiny_model_dir):
    return evaluate_model(tiny_model_dir, TEST, train=TRAIN, max_new_tokens=8)


# --- perplexity ---------------------------------------------------------------------------------


def torch_nll(model_dir: Path, examples: list[Example]) -> tuple[float, int]:
    """The mean loss of GPT2LMHeadModel over the examples, weighted by their learnt tokens."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir, local_files_only=True).eval()
    total, count = 0.0, 0
    for example in examples:
        learnt = sum(label != -100 for label in example.labels[1:])
        with torch.no_grad():
            loss = model(
                input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])
            ).loss
        total, count = total + float(loss) * learnt, count + learnt
    return total / count, count


def test_onnx_perplexity_equals_the_torch_loss(tiny_model_dir, evaluation):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    encoder = ConversationEncoder(tokenizer, max_length=ModelFolder(tiny_model_dir).spec.n_positions)
    examples = [e for t in TEST for e in encoder.encode(t.id, messages_of(t)) if isinstance(e, Example)]
    assert len(examples) > len(TEST)  # the long conversation is cut into windows
    expected, count = torch_nll(tiny_model_dir, examples)
    ppl = evaluation.perplexity
    assert ppl.learnt_tokens == count and ppl.examples == len(examples)
    assert ppl.mean_nll == pytest.approx(expected, rel=1e-4)
    assert ppl.value == pytest.approx(math.exp(expected), rel=1e-4)


def test_perplexity_of_the_served_session_alone(tiny_model_dir):
    from transformers import AutoTokenizer

    folder = ModelFolder(tiny_model_dir)
    session = OnnxGenerator(folder, device="cpu").session
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    alone = measure_perplexity(session, tokenizer, TEST[:1], max_length=folder.spec.n_positions)
    with_prompt = measure_perplexity(
        session, tokenizer, TEST[1:2], max_length=folder.spec.n_positions, system_prompt=SHOP
    )
    assert alone.conversations == 1 and alone.learnt_tokens > 0 and alone.value > 1
    assert with_prompt.learnt_tokens > 0


# --- metrics --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["It ships tomorrow.", "注文した商品がまだ届きません。", "Спасибо за помощь!", "Ça arrive demain 😊"],
)
def test_rouge_l_of_the_reference_itself_is_one(text):
    assert rouge_l(text, text) == 1.0
    assert corpus_bleu([text], [text]) == pytest.approx(100.0)


def test_rouge_l_keeps_words_of_every_script():
    assert words("Ça ARRIVE demain, 注文!") == ["ça", "arrive", "demain", "注", "文"]
    assert rouge_l("It ships tomorrow.", "Nothing in common") == 0.0
    assert 0 < rouge_l("It ships tomorrow.", "It ships today.") < 1
    assert rouge_l("注文した商品", "注文した本") == pytest.approx(2 * 4 / (6 + 5))


# --- the replies ----------------------------------------------------------------------------------


def test_reply_cases_are_the_agent_turns_that_answer_a_customer():
    cases = reply_cases(TEST[:3], system_prompt="default")
    assert [(c.conversation_id, c.turn) for c in cases] == [
        ("order", 3),
        ("order", 5),
        ("unicode", 2),
        ("greeting", 3),  # the opening "Welcome!" answers no one
    ]
    assert cases[0].system_prompt == SHOP and cases[2].system_prompt == "default"
    assert cases[1].history[-2].content == "Could you give me the order number?"
    assert cases[1].reference == "It ships tomorrow."


def test_spread_picks_evenly_and_in_order():
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(3)), 5) == [0, 1, 2]
    assert spread(list(range(3)), None) == [0, 1, 2]


def test_the_model_reply_is_what_the_engine_answers(tiny_model_dir, tiny_engine):
    folder = ModelFolder(tiny_model_dir)
    generator = OnnxGenerator(folder)
    for system_prompt, text in [(None, "Where is my order?"), (SHOP, "Ça arrive quand ? 📦")]:
        case = ReplyCase("c", 2, system_prompt, (Turn("user", text),), "unused")
        answer = model_reply(folder, generator, case, GenerationConfig(max_new_tokens=16))
        started = tiny_engine.start(system_prompt=system_prompt)
        reply = tiny_engine.reply(started.id, text)
        assert (answer.text, answer.tokens) == (reply.text, reply.reply_tokens)


def test_the_table_has_a_row_per_system_and_the_replies(evaluation):
    model, retrieval = evaluation.scores
    assert model.system == "model" and retrieval.system == "retrieval"
    assert evaluation.replies_available == 16 == model.replies == retrieval.replies
    assert 1 <= model.tokens_per_reply <= 8 and model.latency_ms_p95 >= model.latency_ms_mean * 0.5 > 0
    first = evaluation.replies[0]
    assert (first.conversation_id, first.turn, first.retrieval) == ("order", 3, TRAIN[0].turns[1].content)
    assert retrieval.rouge_l > model.rouge_l  # the lookup knows these replies; the random model does not


def test_max_replies_caps_the_replies_but_not_the_perplexity(tiny_model_dir, evaluation):
    capped = evaluate_model(tiny_model_dir, TEST, train=TRAIN, max_replies=2, max_new_tokens=4)
    assert [(r.conversation_id, r.turn) for r in capped.replies] == [("order", 3), ("long", 10)]  # 1st, 9th
    assert capped.row("model").replies == 2 and capped.replies_available == 16
    assert capped.perplexity == evaluation.perplexity


# --- the retrieval baseline -----------------------------------------------------------------------


def test_the_baseline_returns_the_training_reply_of_an_identical_context():
    baseline = RetrievalBaseline(TRAIN)
    for case in reply_cases(TRAIN):
        assert baseline.answer(case.history) == case.reference
    assert len(baseline) == 6


def test_the_agents_previous_turn_tells_follow_ups_apart():
    baseline = RetrievalBaseline(TRAIN)
    asked = (Turn("user", "Hi"), Turn("assistant", "How many pairs do you return?"), Turn("user", "It is 3."))
    assert baseline.answer(asked) == "Print two return labels."
    assert baseline.answer((Turn("user", "order where?"),)) == "Could you give me the order number?"


def test_a_context_sharing_no_word_gets_the_most_frequent_reply():
    baseline = RetrievalBaseline(TRAIN)
    assert baseline.answer((Turn("user", "xyzzy"),)) == "Hello! How can I help you today?"


def test_a_baseline_needs_agent_replies():
    with pytest.raises(EvaluationError, match="no agent reply"):
        RetrievalBaseline([conversation("x", ("assistant", "Welcome!"))])


# --- the report -------------------------------------------------------------------------------------


def test_the_json_has_the_documented_keys(evaluation):
    data = json.loads(json.dumps(evaluation.to_dict(replies=True), allow_nan=False))
    assert set(data) == {
        "model", "settings", "data", "perplexity", "scores", "notes", "metrics", "replies", "handover"
    }  # fmt: skip
    assert data["handover"] is None  # no customer turn of the test data is labelled out of scope
    assert set(data["perplexity"]) == {
        "value",
        "mean_nll",
        "learnt_tokens",
        "conversations",
        "examples",
        "skipped",
    }
    assert set(data["scores"]) == {"model", "retrieval"}
    assert set(data["scores"]["model"]) == {
        "system",
        "description",
        "replies",
        "rouge_l",
        "bleu",
        "latency_ms_mean",
        "latency_ms_p95",
        "tokens_per_reply",
    }
    assert data["settings"] == {"max_new_tokens": 8, "max_replies": None, "system_prompt": None}
    assert data["model"]["device"] == "cpu" and len(data["replies"]) == 16
    assert "replies" not in evaluation.to_dict()  # the card gets the figures only


def test_the_markdown_has_the_rows_and_the_perplexity(evaluation):
    text = evaluation.to_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| system | ROUGE-L F1 | BLEU | replies | mean latency (ms) | p95")
    assert rows[1].startswith("| model: ") and rows[2].startswith("| retrieval: TF-IDF")
    assert f"{evaluation.perplexity.value:.2f}" in text and "learnt tokens" in text


def test_without_training_data_the_markdown_says_why_there_is_no_baseline(tiny_model_dir):
    too_long = conversation("too-long", ("user", "word " * 400), ("assistant", "Sorry?"))
    result = evaluate_model(tiny_model_dir, [TEST[1], too_long], max_new_tokens=4)
    assert [row.system for row in result.scores] == ["model"]
    text = result.to_markdown()
    assert "| retrieval" not in text
    assert "No retrieval baseline: no training conversations were given." in text
    assert "1 agent replies left out: the customer message does not fit" in text
    assert result.row("model").replies == 1 and result.perplexity.skipped


def test_bad_options_and_empty_data_are_refused(tiny_model_dir):
    with pytest.raises(EvaluationError, match="no test conversations"):
        evaluate_model(tiny_model_dir, [])
    with pytest.raises(EvaluationError, match="max_replies"):
        evaluate_model(tiny_model_dir, TEST, max_replies=0)
    with pytest.raises(ModelFolderError, match="does not exist"):
        evaluate_model(tiny_model_dir / "missing", TEST)


# --- files, the card's training data, the command -------------------------------------------------


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_without_train_data_the_card_files_are_indexed(model_copy, tmp_path):
    data = tmp_path / "all.jsonl"
    data.write_text(
        "\n".join(json.dumps({"id": t.id, "messages": [vars(turn) for turn in t.turns]}) for t in TRAIN),
        encoding="utf-8",
    )
    update_card(model_copy, {"data": {"files": [str(data)], "validation_share": 0.25, "seed": 0}})
    result = evaluate_files(model_copy, [CHATS], max_new_tokens=4)
    train_ids, _ = split_ids([t.id for t in TRAIN], validation=0.25, seed=0)
    expected = len(reply_cases([t for t in TRAIN if t.id in train_ids]))
    assert len(train_ids) == 3 and expected < len(reply_cases(TRAIN))  # the validation split is left out
    assert f"over {expected} training replies" in result.row("retrieval").description


def test_missing_card_files_mean_no_baseline_and_a_note(model_copy):
    update_card(model_copy, {"data": {"files": ["/nowhere/train.jsonl"]}})
    assert read_card(model_copy)["data"]["files"] == ["/nowhere/train.jsonl"]
    result = evaluate_files(model_copy, [CHATS], max_new_tokens=4)
    assert result.row("retrieval") is None
    assert result.notes[0].startswith("No retrieval baseline: the training data recorded in card.json")
    assert "/nowhere/train.jsonl" in result.to_markdown()


def test_the_model_is_evaluated_with_the_system_prompt_it_was_trained_with(model_copy):
    update_card(model_copy, {"training": {"system_prompt": "You answer for the shop."}})
    result = evaluate_files(model_copy, [CHATS], max_new_tokens=4, max_replies=2)
    assert result.settings["system_prompt"] == "You answer for the shop."
    told = evaluate_files(model_copy, [CHATS], max_new_tokens=4, max_replies=2, system_prompt="Be brief.")
    assert told.settings["system_prompt"] == "Be brief."


def chatbot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatbot", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def test_the_command_prints_the_table_and_writes_json_and_markdown(tiny_model_dir, tmp_path):
    out_json, out_md = tmp_path / "eval.json", tmp_path / "eval.md"
    result = chatbot(
        "eval",
        str(tiny_model_dir),
        str(CHATS),
        "--train-data",
        *map(str, TRAIN_FILES),
        "--max-new-tokens",
        "8",
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
    )
    assert result.returncode == 0, result.stderr
    assert "| model: " in result.stdout and "| retrieval: " in result.stdout
    assert "read 2 conversations from 1 file" in result.stderr
    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert data["data"] == {"conversations": 2, "replies_available": 3}
    assert data["scores"]["retrieval"]["replies"] == 3 and len(data["replies"]) == 3
    assert out_md.read_text(encoding="utf-8").strip() == result.stdout.strip()


def test_a_missing_model_folder_is_a_readable_error(tmp_path):
    result = chatbot("eval", str(tmp_path / "no-model"), str(CHATS))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: model folder {tmp_path / 'no-model'} does not exist")
    assert "chatbot train" in result.stderr and "Traceback" not in result.stderr


def test_without_the_train_extra_the_command_says_what_to_install(tiny_model_dir, tmp_path):
    shadow = tmp_path / "shadow" / "rouge_score"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'rouge_score'\", name='rouge_score')\n"
    )
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    result = chatbot("eval", str(tiny_model_dir), str(CHATS), env={"PYTHONPATH": path})
    assert result.returncode == 1
    assert "pip install 'chatbot[train]'" in result.stderr and "rouge_score" in result.stderr
    assert "Traceback" not in result.stderr


# --- handing over -------------------------------------------------------------------------------

SHOP_TURNS = [
    "Where is my order?",
    "I want to return shoes.",
    "My card was declined.",
    "Do you ship to Norway?",
]
OFF_TOPIC = ["What's the weather like?", "Who won the football match?", "How do I bake bread?"]


def labelled_test() -> list[Transcript]:
    """In-domain conversations, two off-topic ones labelled whole, and one labelled mid-way."""
    shop = [
        conversation(f"shop-{i}", ("user", text), ("assistant", "Happy to help."))
        for i, text in enumerate(SHOP_TURNS)
    ]
    off = [
        Transcript(
            f"off-{i}", "test", 1, (Turn("user", text, True), Turn("assistant", "Only shop questions."))
        )
        for i, text in enumerate(OFF_TOPIC[:2])
    ]
    mixed = Transcript(
        "mixed",
        "test",
        1,
        (
            Turn("user", SHOP_TURNS[0]),
            Turn("assistant", "Which order?"),
            Turn("user", OFF_TOPIC[2], True),  # the last turn: no agent reply follows, still scored
        ),
    )
    return [*shop, *off, mixed]


@pytest.fixture
def scoped_copy(model_copy):
    ScopeIndex.build(SHOP_TURNS).save(model_copy)
    return model_copy


def test_handover_precision_and_recall_of_each_signal_against_the_labels(scoped_copy):
    result = evaluate_model(
        scoped_copy, labelled_test(), max_new_tokens=4, handover_below=-1000.0, handover_unlike_below=0.3
    )
    handover = result.handover
    assert handover is not None and (handover.messages, handover.labelled) == (8, 3)
    records = handover.records
    assert [r.out_of_scope for r in records] == [False] * 4 + [True, True, False, True]
    assert all(r.similarity is not None and r.similarity < 0.3 for r in records if r.out_of_scope)
    assert all(r.similarity == pytest.approx(1.0, abs=1e-5) for r in records if not r.out_of_scope)
    by_signal = {decision.signal: decision for decision in handover.decisions}
    similarity = by_signal["similarity"]
    assert (similarity.handed_over, similarity.true_positives) == (3, 3)
    assert similarity.precision == similarity.recall == 1.0 and similarity.threshold == "similarity < 0.3"
    confidence = by_signal["confidence"]  # at -1000 only an empty reply is handed over
    empty = [r for r in records if r.empty]
    assert confidence.handed_over == len(empty)
    assert confidence.true_positives == sum(r.out_of_scope for r in empty)
    assert by_signal["either"].recall == 1.0


def test_a_decision_counts_what_it_hands_over():
    def record(label: bool, confidence: float, similarity: float) -> HandoverRecord:
        return HandoverRecord("c", 1, "m", label, confidence, False, similarity)

    records = [
        record(True, -3.0, 0.1),
        record(True, -0.1, 0.5),
        record(False, -3.0, 0.9),
        record(False, -0.1, 0.2),
    ]
    handover = handover_figures(records, Thresholds(-2.0, 0.3))
    figures = {d.signal: (d.handed_over, d.true_positives, d.precision, d.recall) for d in handover.decisions}
    assert figures == {
        "confidence": (2, 1, 0.5, 0.5),
        "similarity": (2, 1, 0.5, 0.5),
        "either": (3, 1, 1 / 3, 0.5),
    }
    swept = [d for d in handover.sweep if d.signal == "similarity" and d.threshold == "similarity < 0.6"]
    assert [(d.handed_over, d.true_positives) for d in swept] == [(3, 2)]
    assert all(d.precision is None for d in handover.sweep if d.handed_over == 0)


def test_every_labelled_message_is_scored_however_few_replies_are_asked_for(scoped_copy):
    result = evaluate_model(scoped_copy, labelled_test(), max_new_tokens=2, max_replies=1)
    assert result.handover is not None
    assert (result.handover.messages, result.handover.labelled) == (4, 3)


def test_without_a_scope_index_the_similarity_signal_is_off_and_a_note_says_so(model_copy):
    result = evaluate_model(model_copy, labelled_test(), max_new_tokens=2)
    assert result.handover is not None
    assert all(r.similarity is None for r in result.handover.records)
    similarity = next(d for d in result.handover.decisions if d.signal == "similarity")
    assert similarity.handed_over == 0 and similarity.recall == 0.0
    assert "no scope index (scope.npz)" in result.to_markdown()
    assert all(d.signal == "confidence" for d in result.handover.sweep)


def test_the_command_prints_and_writes_the_handover_figures(scoped_copy, tmp_path):
    data = tmp_path / "held-out.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"id": t.id, "messages": [vars(turn) for turn in t.turns]}) for t in labelled_test()
        ),
        encoding="utf-8",
    )
    out_json = tmp_path / "eval.json"
    result = chatbot(
        "eval", str(scoped_copy), str(data), "--max-new-tokens", "2", "--handover-unlike-below", "0.25",
        "--handover-below", "-2", "--json", str(out_json),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 customer turns labelled out of scope" in result.stderr
    assert "### Handing over" in result.stdout and "Threshold sweep" in result.stdout
    assert (
        "| similarity to the training customer turns | similarity < 0.25 | 3 | 1.000 | 1.000 |"
        in result.stdout
    )
    figures = json.loads(out_json.read_text(encoding="utf-8"))["handover"]
    assert figures["thresholds"] == {"handover_below": -2.0, "handover_unlike_below": 0.25}
    assert (figures["messages"], figures["labelled"]) == (8, 3) and len(figures["messages_scored"]) == 8
    assert [d["signal"] for d in figures["decisions"]] == ["confidence", "similarity", "either"]
    assert {"signal", "threshold", "handed_over", "true_positives", "precision", "recall"} == set(
        figures["sweep"][0]
    )
