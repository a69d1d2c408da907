"""The portable reference graph (training.export.standard_graph): standard operators, checked
against transformers."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import GPT2LMHeadModel

from chatbot import ModelFolder
from chatbot.card import read_card
from chatbot.errors import ExportError
from training.export.fused_graph import folder_config, load_weights
from training.export.parity import load_session, onnx_logits
from training.export.reference import export_onnx
from training.export.standard_graph import DATA_FILE, OPSET, build_reference, save_reference


def _reference(folder: Path) -> onnx.ModelProto:
    return build_reference(folder_config(folder), load_weights(folder))


def test_the_reference_is_standard_onnx_with_each_weight_once(tiny_model_dir: Path) -> None:
    model = onnx.load(str(tiny_model_dir / "onnx" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)  # with shape inference
    assert {(o.domain, o.version) for o in model.opset_import} == {("", OPSET)}
    assert all(node.domain == "" for node in model.graph.node)
    names = [tensor.name for tensor in model.graph.initializer]
    assert len(names) == len(set(names))
    ops = Counter(node.op_type for node in model.graph.node)
    spec = ModelFolder(tiny_model_dir).spec
    assert ops["Softmax"] == ops["Concat"] / 2 - 0.5 == spec.n_layer  # two caches a layer, one shape
    assert ops["Gemm"] == 1  # the tied LM head reads the token embedding: stored once
    weights = sum(int(np.prod(w.shape)) for w in load_weights(tiny_model_dir).values() if w is not None)
    stored = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert stored < weights * 1.01


def test_a_padded_batch_matches_transformers(tiny_model_dir: Path) -> None:
    """Rows of different lengths, left-padded, over a cache: the mask and positions as transformers
    reads them (the engine sends one row; other runtimes may not)."""
    session = ort.InferenceSession(
        _reference(tiny_model_dir).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    torch_model = GPT2LMHeadModel.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    spec = ModelFolder(tiny_model_dir).spec
    rng = np.random.default_rng(3)
    ids = rng.integers(0, spec.vocab_size, size=(2, 12))
    mask = np.ones((2, 12), dtype=np.int64)
    mask[1, :5] = 0  # row 1 is 7 tokens, left-padded
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        expected = torch_model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        ).logits.numpy()
    # the first 9 tokens as a prefill, then the last 3 one at a time through the cache
    empty = np.zeros((2, spec.n_head, 0, spec.head_dim), dtype=np.float32)
    past = {i.name: empty for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    outputs = [o.name for o in session.get_outputs()]
    rows = []
    for start, end in ((0, 9), (9, 10), (10, 11), (11, 12)):
        feeds = {
            "input_ids": ids[:, start:end],
            "attention_mask": mask[:, :end],
            "position_ids": positions[:, start:end],
            **past,
        }
        result = dict(zip(outputs, session.run(outputs, feeds), strict=True))
        past = {n.replace("present.", "past_key_values.", 1): v for n, v in result.items() if n != "logits"}
        rows.append(result["logits"])
    actual = np.concatenate(rows, axis=1)
    np.testing.assert_allclose(actual[0], expected[0], atol=1e-4)
    np.testing.assert_allclose(actual[1, 5:], expected[1, 5:], atol=1e-4)  # padding's logits mean nothing


def test_gpt2_options_the_writer_follows(tiny_model_factory, tmp_path: Path) -> None:
    """The erf GELU, an untied head and attention scaled by layer: exported, checked, served."""
    base = tiny_model_factory(export=False)
    folder = tmp_path / "variant"
    shutil.copytree(base, folder)
    model = GPT2LMHeadModel.from_pretrained(
        base,
        activation_function="gelu",
        scale_attn_by_inverse_layer_idx=True,
        tie_word_embeddings=False,
    )
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.1)
    model.save_pretrained(folder)
    parity = export_onnx(folder, sequences=2, decode_steps=3)
    assert parity["max_abs_diff"] < 1e-4
    ops = Counter(node.op_type for node in onnx.load(str(folder / "onnx" / "model.onnx")).graph.node)
    assert ops["Erf"] == model.config.n_layer and ops["Tanh"] == 0
    stored = {t.name for t in onnx.load(str(folder / "onnx" / "model.onnx")).graph.initializer}
    assert "lm_head" in stored


def test_weights_beside_the_graph_load_alike(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Past 1 GiB the weights go to model.onnx_data (here forced with a threshold of 0)."""
    save_reference(_reference(tiny_model_dir), tmp_path / "model.onnx", external_above=0)
    assert (tmp_path / DATA_FILE).stat().st_size > (tmp_path / "model.onnx").stat().st_size
    ids = list(range(1, 30))
    inline, beside = (
        load_session(tiny_model_dir / "onnx" / "model.onnx"),
        load_session(tmp_path / "model.onnx"),
    )
    np.testing.assert_array_equal(onnx_logits(inline, ids, 20), onnx_logits(beside, ids, 20))


def test_a_model_other_than_gpt2_is_sent_to_optimum(tiny_model_factory, tmp_path: Path) -> None:
    folder = tmp_path / "llama"
    shutil.copytree(tiny_model_factory(export=False), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ExportError, match="'llama' model") as caught:
        export_onnx(folder)
    assert "--exporter optimum" in str(caught.value) and "chatbot[optimum]" in str(caught.value)
    assert not (folder / "onnx").exists()


def test_the_optimum_exporter_says_where_it_lives(tiny_model_factory, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    try:
        import optimum.exporters.onnx  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("optimum-onnx is installed here: tests/test_optimum.py runs it")
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_factory(export=False), folder)
    with pytest.raises(ExportError, match="needs optimum-onnx") as caught:
        export_onnx(folder, exporter="optimum")
    assert "pip install 'chatbot[optimum]'" in str(caught.value)
    with pytest.raises(ExportError, match="unknown exporter"):
        export_onnx(folder, exporter="torch")
    assert "onnx" not in read_card(folder)
