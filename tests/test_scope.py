"""The out-of-scope signal: the scope index (chatbot.scope), written by training into a model folder,
carried by versions, loaded and served by the engine without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from chatbot import Engine, EngineConfig, GenerationConfig, ModelFolderError
from chatbot.folder import ModelFolder, load_scope
from chatbot.scope import SCOPE_FILE, SCOPE_HEADER, ScopeIndex, ScopeSettings, features
from chatbot.versions import ModelVersions
from training.card import read_card
from training.fitting.train import write_scope
from training.transcripts.readers import Transcript, Turn

SHOP_TURNS = [
    "Where is my order?",
    "Has my order #48213 shipped yet?",
    "I want to return my shoes",
    "How do I get a refund for a damaged jacket?",
    "My card was declined at checkout",
    "Can I change the delivery address of my order?",
    "Do you ship to Norway?",
    "I forgot my password and cannot log in to my account",
]
OFF_TOPIC = "What's the weather like in Paris tomorrow?"
IN_DOMAIN = "where is my order"
SHORT = GenerationConfig(max_new_tokens=4)


@pytest.fixture(scope="module")
def index() -> ScopeIndex:
    return ScopeIndex.build(SHOP_TURNS)


@pytest.fixture
def scoped_dir(tiny_model_dir: Path, tmp_path: Path, index: ScopeIndex) -> Path:
    """A copy of the tiny model folder with a scope index of the shop's customer turns."""
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    index.save(folder, customer_turns=len(SHOP_TURNS))
    return folder


# -- the index ---------------------------------------------------------------------------------


def test_a_message_seen_in_training_scores_one_and_an_off_topic_one_scores_low(index):
    assert index.similarity("Where is my order?") == pytest.approx(1.0, abs=1e-5)
    assert index.similarity(OFF_TOPIC) < 0.3 < index.similarity(IN_DOMAIN)
    assert index.similarity("") == 0.0 and index.similarity("!!!") == 0.0  # no word at all


def test_a_typo_and_another_order_number_stay_near_their_training_turn(index):
    assert index.similarity("has my ordr #77777 shiped yet") > 0.5
    # digits are written as 0 before hashing: an order number is a slot, not a topic
    assert features("order #48213") == features("order #91234")


def test_similarity_is_the_cosine_of_the_nearest_turn_computed_densely(index):
    def dense(text: str) -> np.ndarray:
        vector = np.zeros(index.settings.buckets)
        for feature, count in features(text).items():
            vector[feature] = (1 + np.log(count)) * index.idf[feature]
        return vector / np.linalg.norm(vector)

    message = "can I return a damaged jacket to Norway"
    expected = max(float(dense(message) @ dense(turn)) for turn in SHOP_TURNS)
    assert index.similarity(message) == pytest.approx(expected, abs=1e-5)


def test_duplicates_are_indexed_once_and_empty_turns_are_left_out():
    index = ScopeIndex.build(["Where is my order?", "where  is my ORDER?", "???", "Refund please"])
    assert len(index) == 2


def test_the_index_round_trips_through_its_files(tmp_path, index):
    index.save(tmp_path, customer_turns=8)
    loaded = load_scope(tmp_path)
    assert loaded is not None and len(loaded) == len(index)
    assert loaded.header["customer_turns"] == 8 and loaded.header["format"] == 1
    assert loaded.settings == ScopeSettings()
    for text in (OFF_TOPIC, IN_DOMAIN, "refund"):
        assert loaded.similarity(text) == pytest.approx(index.similarity(text))


def test_a_folder_without_an_index_has_the_signal_off(tmp_path):
    assert load_scope(tmp_path) is None


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        (lambda folder: (folder / SCOPE_HEADER).unlink(), SCOPE_HEADER),
        (lambda folder: (folder / SCOPE_FILE).unlink(), SCOPE_FILE),
        (lambda folder: (folder / SCOPE_FILE).write_bytes(b"not a zip"), SCOPE_FILE),
        (lambda folder: (folder / SCOPE_HEADER).write_text("{"), SCOPE_HEADER),
        (lambda folder: _edit_header(folder, format=99), "format 99"),
        (lambda folder: (folder / SCOPE_HEADER).write_text("[]"), "must hold a JSON object"),
        (lambda folder: _edit_header(folder, indexed=1), "does not match"),
        (lambda folder: _edit_header(folder, settings={"buckets": 16}), "does not match"),
    ],
    ids=[
        "no header",
        "no index",
        "broken index",
        "broken header",
        "newer format",
        "not an object",
        "wrong count",
        "wrong size",
    ],
)
def test_a_broken_index_is_refused_naming_the_file_and_what_to_do(tmp_path, index, damage, names):
    index.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(ModelFolderError, match=names) as raised:
        load_scope(tmp_path)
    assert "chatbot train" in str(raised.value) and "delete" in str(raised.value)


def _edit_header(folder: Path, **changes: object) -> None:
    header = json.loads((folder / SCOPE_HEADER).read_text())
    (folder / SCOPE_HEADER).write_text(json.dumps({**header, **changes}))


# -- training writes it, versions carry it -----------------------------------------------------


def test_training_indexes_customer_turns_and_leaves_labelled_ones_out(tmp_path, tiny_model_dir):
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    transcripts = [
        Transcript(
            "t-1",
            "test",
            1,
            (
                Turn("user", "Where is my order?"),
                Turn("assistant", "Could you give me the number?"),
                Turn("user", "Who won the match last night?", out_of_scope=True),
                Turn("assistant", "I can only help with the shop."),
            ),
        ),
        Transcript("t-2", "test", 5, (Turn("user", "I want a refund"), Turn("assistant", "Sure."))),
    ]
    entry = write_scope(folder, transcripts, lambda line: None)
    assert entry == {
        "file": SCOPE_FILE,
        "distinct_turns_indexed": 2,
        "customer_turns": 3,
        "labelled_out_of_scope_left_out": 1,
    }
    assert read_card(folder)["scope"] == entry
    header = json.loads((folder / SCOPE_HEADER).read_text())
    assert header["labelled_out_of_scope_left_out"] == 1 and header["settings"]["buckets"] == 2**18
    scope = ModelFolder(folder).scope
    assert scope is not None and scope.similarity("Who won the match last night?") < 0.5


def test_adding_a_folder_as_a_version_carries_its_index(tmp_path, scoped_dir):
    version = ModelVersions(root=tmp_path / "models").add(scoped_dir)
    assert (version.path / SCOPE_FILE).is_file() and (version.path / SCOPE_HEADER).is_file()
    scope = ModelFolder(version.path).scope
    assert scope is not None and len(scope) == len(SHOP_TURNS)


# -- the engine serves it ----------------------------------------------------------------------


def test_an_off_topic_message_is_handed_over_as_out_of_scope_and_an_in_domain_one_is_not(scoped_dir):
    config = EngineConfig(generation=SHORT, handover_below=None)  # the similarity signal alone
    with Engine.from_folder(scoped_dir, config=config) as engine:
        off = engine.start()
        reply = engine.reply(off.id, OFF_TOPIC)
        assert reply.similarity is not None and reply.similarity < 0.3
        assert reply.handover and reply.handover_reason == "out-of-scope"
        stored = engine.get(off.id).messages[-1].meta
        assert stored["similarity"] == reply.similarity and stored["handover_reason"] == "out-of-scope"
        handover = engine.handover(off.id)
        assert handover is not None and handover.reason == "out-of-scope" and handover.state == "waiting"

        on = engine.start()
        reply = engine.reply(on.id, IN_DOMAIN)
        assert reply.similarity is not None and reply.similarity > 0.3
        assert reply.handover_reason is None or (reply.handover_reason == "flagged" and not reply.text)


def test_both_signals_firing_name_both_reasons(scoped_dir):
    config = EngineConfig(generation=SHORT, handover_below=0.0)  # every reply is unsure
    with Engine.from_folder(scoped_dir, config=config) as engine:
        conversation = engine.start()
        reply = engine.reply(conversation.id, OFF_TOPIC)
        assert reply.handover_reason == "flagged, out-of-scope"
        assert engine.handover(conversation.id).reason == "flagged, out-of-scope"


def test_the_threshold_turns_the_signal_off_and_an_old_folder_serves_without_it(scoped_dir, tiny_model_dir):
    off = EngineConfig(generation=SHORT, handover_below=None, handover_unlike_below=None)
    with Engine.from_folder(scoped_dir, config=off) as engine:
        reply = engine.reply(engine.start().id, OFF_TOPIC)
        assert reply.similarity is not None and reply.handover_reason in (None, "flagged")
    config = EngineConfig(generation=SHORT, handover_below=None)
    with Engine.from_folder(tiny_model_dir, config=config) as engine:  # no scope.npz
        assert engine.scope is None
        reply = engine.reply(engine.start().id, OFF_TOPIC)
        assert reply.similarity is None and reply.handover_reason in (None, "flagged")


def test_a_broken_index_stops_the_engine_at_start_up(scoped_dir):
    (scoped_dir / SCOPE_FILE).write_bytes(b"broken")
    with pytest.raises(ModelFolderError, match=SCOPE_FILE):
        Engine.from_folder(scoped_dir)


def test_the_engine_serves_the_signal_without_importing_torch(scoped_dir):
    script = textwrap.dedent(
        f"""
        import sys
        from chatbot import Engine, EngineConfig, GenerationConfig
        config = EngineConfig(generation=GenerationConfig(max_new_tokens=4), handover_below=None)
        with Engine.from_folder({str(scoped_dir)!r}, config=config) as engine:
            reply = engine.reply(engine.start().id, {OFF_TOPIC!r})
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        print(reply.handover_reason, heavy)
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["out-of-scope", "[]"]


@pytest.mark.parametrize(("flag", "handed_over"), [("0.3", True), ("0", False)], ids=["on", "off"])
def test_chat_says_why_a_person_should_take_over_and_the_flag_turns_it_off(
    scoped_dir, tmp_path, flag, handed_over
):
    done = subprocess.run(
        [
            sys.executable, "-m", "chatbot", "chat", str(scoped_dir), "--store", str(tmp_path / "c.db"),
            "--max-new-tokens", "4", "--handover-below", "-1000", "--handover-unlike-below", flag,
        ],
        input=f"{OFF_TOPIC}\n/quit\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = "[a person should take over here: unlike what the bot was trained on]"
    assert (said in done.stdout) is handed_over, done.stdout
