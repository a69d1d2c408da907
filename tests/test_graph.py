"""The fused graph builder (training.export.fused_graph) on real tiny models, run by ONNX Runtime's
CPU provider."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from chatbot import GenerationConfig, ModelFolder, OnnxGenerator
from chatbot.errors import ChatbotError, ExportError, ModelFolderError
from chatbot.fused import FusedSession
from chatbot.loader import choose_variant, load_generator
from chatbot.scheduler import BatchingGenerator
from training.export.fused_graph import build_variant, fused_logits

# the CPU graphs' fused operators (training.export.fused_graph)
FUSED_OPS = {"LayerNormalization", "GroupQueryAttention", "FastGelu"}


@pytest.fixture(scope="module")
def fp32_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model with the exact (fp32) fused variant built beside cpu-int8."""
    folder = tmp_path_factory.mktemp("fused") / "model"
    shutil.copytree(tiny_model_dir, folder)
    build_variant(folder, "cpu-fp32")
    return folder


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_the_int8_graph_is_fused_and_recorded_in_the_card(tiny_model_dir: Path) -> None:
    folder = ModelFolder(tiny_model_dir)
    ops = _ops(folder.variant_path("cpu-int8"))
    n_layer, n_embd = folder.spec.n_layer, folder.spec.n_head * folder.spec.head_dim
    assert ops["GroupQueryAttention"] == n_layer and ops["FastGelu"] == n_layer
    # on the CPU a plain Add and LayerNormalization beat SkipLayerNormalization (training.export.fused_graph)
    assert ops["LayerNormalization"] == 2 * n_layer + 1 and ops["SkipLayerNormalization"] == 0
    assert ops["MatMulIntegerToFloat"] == 4 * n_layer + 1  # the LM head too
    # rows are quantised alone: one block per row, the block being the whole row
    model = onnx.load(str(folder.variant_path("cpu-int8")), load_external_data=False)
    blocks = {
        onnx.helper.get_attribute_value(attribute)
        for node in model.graph.node
        if node.op_type == "QuantizeLinear"
        for attribute in node.attribute
        if attribute.name == "block_size"
    }
    assert ops["QuantizeLinear"] == 4 * n_layer + 1 and blocks == {n_embd, 4 * n_embd}
    assert not {"DynamicQuantizeMatMul", "DynamicQuantizeLinear"} & set(ops)
    assert not {"MatMul", "MemcpyToHost", "MemcpyFromHost", "Softmax"} & set(ops)
    # the optimum export has ~100 nodes per layer; here ~7 per MatMul quantise and rescale (and
    # the LM head's few reshapes for scoring several positions)
    assert sum(ops.values()) < 40 * n_layer + 30
    entry = folder.card["onnx"]["cpu-int8"]
    assert entry["path"] == "onnx/cpu-int8/model.onnx" and entry["precision"] == "int8"
    parity = entry["parity"]
    assert parity["max_rel_diff"] <= parity["tolerance"] and parity["greedy_agreement"] >= 0.9
    assert folder.variants == ["cpu-int8"]


def test_the_fp32_graph_matches_the_reference_step_by_step(fp32_dir: Path) -> None:
    folder = ModelFolder(fp32_dir)
    assert set(_ops(folder.variant_path("cpu-fp32"))) >= FUSED_OPS
    parity = folder.card["onnx"]["cpu-fp32"]["parity"]
    assert parity["max_rel_diff"] < 1e-4 and parity["greedy_agreement"] == 1.0
    from training.export.parity import load_session, onnx_logits

    session = FusedSession(folder.variant_path("cpu-fp32"), folder.spec)
    ids = np.random.default_rng(1).integers(0, folder.spec.vocab_size, size=50).tolist()
    expected = onnx_logits(load_session(folder.onnx_path), ids, 20)[19:]
    actual = np.stack(list(fused_logits(session, ids, 20)))
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_the_fp32_graph_and_the_reference_write_the_same_whole_replies(fp32_dir: Path) -> None:
    folder = ModelFolder(fp32_dir)
    fused = load_generator(folder, variant="cpu-fp32")
    reference = OnnxGenerator(folder, device="cpu")
    config = GenerationConfig(max_new_tokens=60)
    for text in ("Where is my order?", "I want a refund for order 778", "Bonjour, ma commande est en retard"):
        prompt = folder.encode(
            folder.template.render([{"role": "user", "content": text}], add_generation_prompt=True)
        )
        assert [t.id for t in fused.generate(prompt, config)] == [
            t.id for t in reference.generate(prompt, config)
        ]


def test_the_graph_picks_the_greedy_token_itself(tiny_model_dir: Path) -> None:
    folder = ModelFolder(tiny_model_dir)
    session = FusedSession(folder.variant_path("cpu-int8"), folder.spec)
    cache = session.new_cache(2)
    result = session.step(cache, 0, [[5, 6, 7, 8], [9, 10, 11, 12]], [0, 0])
    assert result.logits.shape == (2, folder.spec.vocab_size)
    assert result.next_token.tolist() == result.logits.argmax(axis=1).tolist()


def test_a_step_can_score_every_position_it_feeds(fp32_dir: Path) -> None:
    folder = ModelFolder(fp32_dir)
    session = FusedSession(folder.variant_path("cpu-fp32"), folder.spec)
    assert session.scores_drafts
    ids = [5, 6, 7, 8, 9]
    whole = session.step(session.new_cache(), 0, [ids], [0], scored=3)  # the picks after 7, 8 and 9
    one_by_one = [session.step(session.new_cache(), 0, [ids[:n]], [0]) for n in (3, 4, 5)]
    assert whole.tokens.shape == (1, 3) and whole.next_token[0] == whole.tokens[0, -1]
    assert whole.tokens[0].tolist() == [int(step.next_token[0]) for step in one_by_one]
    np.testing.assert_allclose(whole.logprobs[0], [step.next_logprob[0] for step in one_by_one], atol=1e-5)
    np.testing.assert_allclose(whole.logits[0], one_by_one[-1].logits[0], atol=1e-4)
    cache = session.new_cache()  # and the single-position steps after it are as before
    session.step(cache, 0, [ids], [0], scored=5)
    after = session.step(cache, 0, [[3]], [5])
    assert after.tokens.shape == (1, 1)
    assert int(after.next_token[0]) == int(
        session.step(session.new_cache(), 0, [[*ids, 3]], [0]).next_token[0]
    )


def test_the_engine_serves_the_int8_variant_through_the_scheduler_by_default(tiny_model_dir: Path) -> None:
    folder = ModelFolder(tiny_model_dir)
    assert choose_variant(folder, "cpu") == "cpu-int8"
    assert isinstance(load_generator(folder, device="cpu"), BatchingGenerator)
    assert isinstance(load_generator(folder, variant="reference"), OnnxGenerator)


def test_the_variant_comes_from_the_environment(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATBOT_VARIANT", "reference")
    assert choose_variant(ModelFolder(tiny_model_dir), "cpu") == "reference"


def test_a_missing_or_foreign_variant_is_refused_with_the_command_that_builds_it(
    tiny_model_dir: Path,
) -> None:
    folder = ModelFolder(tiny_model_dir)
    with pytest.raises(ModelFolderError, match="has no 'cpu-fp32' variant") as missing:
        choose_variant(folder, "cpu", "cpu-fp32")
    assert "chatbot export" in str(missing.value.hint) and "--variant cpu-fp32" in str(missing.value.hint)
    with pytest.raises(ChatbotError, match="does not run on the cuda device"):
        choose_variant(folder, "cuda", "cpu-int8")


def test_a_graph_from_an_older_builder_falls_back_to_the_reference_with_a_warning(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir, path)
    card = json.loads((path / "card.json").read_text())
    del card["onnx"]["cpu-int8"]["format"]  # as written before next_logprob & co. existed
    (path / "card.json").write_text(json.dumps(card))
    folder = ModelFolder(path)
    assert choose_variant(folder, "cpu") == "reference"
    assert f"chatbot export {path} --variant cpu-int8" in caplog.text
    with pytest.raises(ModelFolderError, match="built by an older chatbot") as refused:
        choose_variant(folder, "cpu", "cpu-int8")
    assert "--variant cpu-int8" in str(refused.value.hint)


def test_the_builder_refuses_unknown_variants_and_folders_without_a_reference(
    tiny_model_factory, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="unknown variant 'gpu-int4'"):
        build_variant(tiny_model_factory(), "gpu-int4")
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_factory(export=False, n_positions=32), bare)
    with pytest.raises(ModelFolderError, match=r"model\.onnx is missing") as error:
        build_variant(bare, "cpu-int8")
    assert "chatbot export" in str(error.value.hint)
    assert not (bare / "onnx" / "cpu-int8").exists()


def test_the_cuda_variant_needs_a_gpu_to_be_checked(tiny_model_dir: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine can check the cuda-fp16 variant")
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    with pytest.raises(ExportError, match="checked on the GPU"):
        build_variant(folder, "cuda-fp16")
    assert "cuda-fp16" not in json.loads((folder / "card.json").read_text())["onnx"]


def test_chatbot_export_builds_the_variants_it_is_asked_for(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    shutil.rmtree(folder / "onnx" / "cpu-int8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbot",
            "export",
            str(folder),
            "--variant",
            "cpu-int8",
            "--variant",
            "cpu-fp32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "built onnx/cpu-int8/model.onnx" in result.stdout
        and "built onnx/cpu-fp32/model.onnx" in result.stdout
    )
    assert sorted(ModelFolder(folder).variants) == ["cpu-fp32", "cpu-int8"]
