"""The GPU path: the cuda-fp16 graph, its parity check and the scheduler replaying CUDA graphs.

These run where onnxruntime has the CUDA execution provider (``pip install 'chatbot[gpu]'`` on a
machine with an NVIDIA GPU) and are skipped elsewhere: CI has no GPU. The same bookkeeping
(fixed slots, the decode step feeding itself, batch buckets) runs on the CPU in
``test_scheduler.py``'s ``fixed-slots`` cases.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from together import at_once

from chatbot import GenerationConfig, ModelFolder
from chatbot.generation import CUDA
from chatbot.loader import choose_variant, load_generator
from chatbot.scheduler import BatchingGenerator
from training.export.fused_graph import build_variant

pytestmark = pytest.mark.skipif(
    CUDA not in ort.get_available_providers(), reason="needs onnxruntime-gpu and an NVIDIA GPU"
)


@pytest.fixture(scope="module")
def folder(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelFolder:
    path = tmp_path_factory.mktemp("cuda") / "model"
    shutil.copytree(tiny_model_dir, path)
    build_variant(path, "cuda-fp16")
    return ModelFolder(path)


def _prompts(folder: ModelFolder, count: int) -> list[list[int]]:
    texts = [f"customer {i}: my order {i * 53} never came. " * (1 + i % 3) for i in range(count)]
    return [folder.encode(folder.template.render([{"role": "user", "content": t}])) for t in texts]


def test_the_cuda_variant_is_checked_on_the_gpu_and_served_by_default(folder: ModelFolder) -> None:
    parity = folder.card["onnx"]["cuda-fp16"]["parity"]
    assert parity["max_rel_diff"] <= 1e-2 and parity["greedy_agreement"] >= 0.95
    assert choose_variant(folder, "cuda") == "cuda-fp16"
    generator = load_generator(folder, device="cuda")
    assert isinstance(generator, BatchingGenerator) and generator.device == "cuda"
    assert generator.session.cuda_graphs


def test_replayed_graphs_give_every_batch_size_the_replies_it_would_get_alone(folder: ModelFolder) -> None:
    """One CUDA graph per batch size: a graph captured for one size replayed for another would
    leave row 0 right and the other rows wrong, silently (GPU.md). Greedy replies in batches of
    1..8 rows (buckets 1, 2, 4, 8) must follow the solo replies' log-probabilities closely."""
    generator = load_generator(folder, device="cuda", max_batch=8)
    prompts = _prompts(folder, 8)
    configs = [GenerationConfig(max_new_tokens=6 + 4 * i) for i in range(8)]
    alone = [list(generator.generate(p, c)) for p, c in zip(prompts, configs, strict=True)]
    for wave in (2, 3, 8):  # a new bucket each wave, after bucket 1 was captured by the solo replies
        results = at_once(generator, prompts[:wave], configs[:wave])
        for got, expected in zip(results, alone[:wave], strict=True):
            same = min(len(got), len(expected))
            assert same > 0
            # fp16 GEMMs may round differently per batch size; a wrong replay is off by whole units
            assert [t.id for t in got[:same]][:3] == [t.id for t in expected[:same]][:3]
            gaps = np.abs(np.array([t.logprob for t in got[:same]]) - [t.logprob for t in expected[:same]])
            assert gaps[: min(same, 4)].max() < 0.05


def test_sampled_replies_on_the_gpu_are_reproducible_by_seed(folder: ModelFolder) -> None:
    generator = load_generator(folder, device="cuda")
    prompt = _prompts(folder, 1)[0]
    config = GenerationConfig(max_new_tokens=20, temperature=0.8, top_k=30, seed=7)
    first = [t.id for t in generator.generate(prompt, config)]
    assert first == [t.id for t in generator.generate(prompt, config)]
