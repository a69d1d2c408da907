"""A model folder written by the previous release still loads, serves and retrains.

``tests/data/previous-release`` was built by ``training.fitting.tiny.build_tiny_model`` at commit 12d44c7
(the last before transformers 5): transformers 4.57.6, tokenizers 0.22.2, and its reference graph
exported by optimum-onnx 0.1.0 (opset 18). It is kept as it was written; tests work on copies.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from chatbot import Engine, EngineConfig, GenerationConfig, ModelFolder
from chatbot.card import read_card
from training.demo.corpus import write_sample
from training.export.parity import load_session, onnx_logits
from training.export.reference import export_onnx
from training.fitting.train import TrainOptions, train

PREVIOUS = Path(__file__).parent / "data" / "previous-release"


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    folder = tmp_path / "previous-release"
    shutil.copytree(PREVIOUS, folder)
    return folder


def test_it_loads_as_it_was_written(previous: Path) -> None:
    folder = ModelFolder(previous)
    card = folder.card
    assert card["versions"]["transformers"] == "4.57.6"
    assert card["onnx"]["reference"]["exporter"] == "optimum-onnx 0.1.0"
    assert folder.variants == ["cpu-int8"] and folder.variant_is_current("cpu-int8")
    assert folder.spec.n_layer == 2 and folder.stop_token_ids


@pytest.mark.parametrize("variant", ["auto", "reference"])
def test_it_serves(previous: Path, variant: str) -> None:
    """The fast int8 graph it was given, and the exporter's graph through the reference generator."""
    config = EngineConfig(generation=GenerationConfig(max_new_tokens=8))
    with Engine.from_folder(previous, store=":memory:", config=config, variant=variant) as engine:
        conversation = engine.start()
        reply = engine.reply(conversation.id, "Where is my order?")
    assert reply.text is not None and reply.confidence <= 0


def test_a_new_export_computes_what_the_old_one_did(previous: Path) -> None:
    """optimum's graph and the one written from the weights agree (and both with PyTorch)."""
    old = load_session(previous / "onnx" / "model.onnx")
    ids = np.random.default_rng(5).integers(0, ModelFolder(previous).spec.vocab_size, size=40).tolist()
    before = onnx_logits(old, ids, 30)
    export_onnx(previous)
    after = onnx_logits(load_session(previous / "onnx" / "model.onnx"), ids, 30)
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert read_card(previous)["onnx"]["reference"]["exporter"].startswith("chatbot.training.portable")


def test_it_retrains_on_the_new_stack(previous: Path, tmp_path: Path) -> None:
    data = write_sample(tmp_path / "new.jsonl", n=24, seed=2)
    options = TrainOptions(
        data=(str(data),), out=tmp_path / "models", base=str(previous), epochs=1, eval_replies=0
    )
    result = train(options, progress=lambda message: None)
    assert result.folder is not None
    card = read_card(result.folder)
    assert card["base_model"] == str(previous)
    assert int(card["versions"]["transformers"].split(".")[0]) >= 5
    assert card["onnx"]["reference"]["exporter"].startswith("chatbot.training.portable")
    config = EngineConfig(generation=GenerationConfig(max_new_tokens=8))
    with Engine.from_folder(result.folder, store=":memory:", config=config) as engine:
        assert engine.reply(engine.start().id, "hello").text is not None
