"""`chatbot[optimum]` in its own environment (`make optimum`): optimum's exporter and
ORTModelForCausalLM on folders this environment trained, next to our own export.

optimum-onnx 0.1.0 needs transformers<4.58, so it cannot be installed beside the train extra;
``make test`` builds ``.venv-optimum`` from ``constraints-optimum.txt`` and names its Python in
``CHATBOT_OPTIMUM_PYTHON``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from chatbot import GenerationConfig, ModelFolder, OnnxGenerator
from chatbot.card import read_card
from training.export.parity import load_session, onnx_logits

PROMPT = [2, 40, 41, 42, 43, 4, 3]


@pytest.fixture(scope="module")
def optimum_python() -> Path:
    python = os.environ.get("CHATBOT_OPTIMUM_PYTHON", "")
    if python and Path(python).is_file():
        return Path(python)
    reason = f"no optimum environment (CHATBOT_OPTIMUM_PYTHON={python!r}; `make optimum` builds one)"
    if os.environ.get("CHATBOT_OPTIMUM_TESTS") == "required":
        pytest.fail(f"the optimum tests must run here: {reason}")
    pytest.skip(reason)


def _run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=600)


def test_its_pins_are_the_ones_stated(optimum_python: Path) -> None:
    script = (
        "import json; from importlib.metadata import version as v; "
        "print(json.dumps({n: v(n) for n in ('transformers', 'optimum', 'optimum-onnx')}))"
    )
    result = _run(optimum_python, "-c", script)
    assert result.returncode == 0, result.stderr
    versions = json.loads(result.stdout)
    assert versions["transformers"].startswith("4.57.") and versions["optimum-onnx"].startswith("0.1.")


def test_optimum_exports_a_folder_trained_on_transformers_5(
    optimum_python: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    ours = tmp_path / "ours.onnx"
    shutil.copy(folder / "onnx" / "model.onnx", ours)
    result = _run(optimum_python, "-m", "chatbot", "export", str(folder), "--exporter", "optimum")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity: max |ONNX - PyTorch| logit" in result.stdout
    reference = read_card(folder)["onnx"]["reference"]
    assert reference["exporter"].startswith("optimum-onnx 0.1")
    assert reference["parity"]["max_abs_diff"] <= reference["parity"]["tolerance"]
    # the exporter's graph and ours compute the same logits, step by step through the cache
    ids = np.random.default_rng(9).integers(0, ModelFolder(folder).spec.vocab_size, size=48).tolist()
    theirs = onnx_logits(load_session(folder / "onnx" / "model.onnx"), ids, 40)
    np.testing.assert_allclose(theirs, onnx_logits(load_session(ours), ids, 40), atol=1e-5)
    # and the engine serves it here
    greedy = GenerationConfig(max_new_tokens=6, temperature=0.0)
    assert [t.id for t in OnnxGenerator(ModelFolder(folder)).generate(PROMPT, greedy)]


def test_ort_model_for_causal_lm_runs_our_export(optimum_python: Path, tiny_model_dir: Path) -> None:
    script = f"""
import json, torch
from optimum.onnxruntime import ORTModelForCausalLM
model = ORTModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}, subfolder="onnx", file_name="model.onnx")
ids = torch.tensor([{PROMPT}])
out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                     eos_token_id=None, pad_token_id=0)
print(json.dumps(out[0, ids.shape[1]:].tolist()))
"""
    result = _run(optimum_python, "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    greedy = GenerationConfig(max_new_tokens=6, temperature=0.0)
    ours = [t.id for t in OnnxGenerator(ModelFolder(tiny_model_dir)).generate(PROMPT, greedy)]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    assert theirs[: len(ours)] == ours
