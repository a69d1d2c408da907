"""Generation with ONNX Runtime on a real exported tiny model, checked against transformers."""

from __future__ import annotations

import numpy as np
import pytest

from chatbot import GenerationConfig, ModelFolder, OnnxGenerator
from chatbot.generation import STOP_SPINNING, choose_providers
from chatbot.sampling import Sampler, log_softmax
from chatbot.textstream import IncrementalDecoder

PROMPTS = [
    [{"role": "user", "content": "Where is my order 12345?"}],
    [
        {"role": "system", "content": "You are the support agent of a small shop."},
        {"role": "user", "content": "I want a refund 😡"},
        {"role": "assistant", "content": "I am sorry to hear that. What is the order number?"},
        {"role": "user", "content": "It is A-778, bought on 3 May"},
    ],
    [{"role": "user", "content": "注文番号は 12345 です。いつ届きますか？"}],
]


@pytest.fixture(scope="module")
def folder(tiny_model_dir) -> ModelFolder:
    return ModelFolder(tiny_model_dir)


@pytest.fixture(scope="module")
def onnx(folder) -> OnnxGenerator:
    return OnnxGenerator(folder, device="cpu")


@pytest.fixture(scope="module")
def reference(folder):
    from training.evaluation.reference import TransformersGenerator

    return TransformersGenerator(folder)


def prompt_ids(folder: ModelFolder, messages) -> list[int]:
    return folder.encode(folder.template.render(messages))


@pytest.mark.parametrize("messages", PROMPTS)
def test_greedy_onnx_matches_greedy_transformers(folder, onnx, reference, messages):
    ids = prompt_ids(folder, messages)
    config = GenerationConfig(max_new_tokens=48)
    ours = list(onnx.generate(ids, config))
    theirs = list(reference.generate(ids, config))
    assert [t.id for t in ours] == [t.id for t in theirs]
    assert np.allclose([t.logprob for t in ours], [t.logprob for t in theirs], atol=1e-3)


def test_greedy_matches_transformers_generate(folder, onnx, reference):
    """The KV-cached ONNX loop against transformers' own `generate` (not only our loop on torch)."""
    import torch

    ids = prompt_ids(folder, PROMPTS[1])
    ours = [t.id for t in onnx.generate(ids, GenerationConfig(max_new_tokens=32))]
    with torch.inference_mode():
        out = reference.model.generate(
            torch.tensor([ids]),
            max_new_tokens=32,
            do_sample=False,
            eos_token_id=list(folder.stop_token_ids),
            pad_token_id=folder.stop_token_ids[-1],
        )
    assert ours == out[0, len(ids) :].tolist()


def test_sampling_is_reproducible_with_a_seed(folder, onnx):
    ids = prompt_ids(folder, PROMPTS[0])
    config = GenerationConfig(max_new_tokens=24, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    first = [t.id for t in onnx.generate(ids, config)]
    again = [t.id for t in onnx.generate(ids, config)]
    other = [t.id for t in onnx.generate(ids, GenerationConfig(**{**config.__dict__, "seed": 8}))]
    assert first == again
    assert first != other


def test_generation_stops_at_max_new_tokens_and_at_the_window(folder, onnx):
    ids = prompt_ids(folder, PROMPTS[0])
    assert len(list(onnx.generate(ids, GenerationConfig(max_new_tokens=5)))) <= 5
    near_end = (ids * folder.spec.n_positions)[: folder.spec.n_positions - 3]
    assert len(list(onnx.generate(near_end, GenerationConfig(max_new_tokens=50)))) <= 3


def test_generation_stops_right_after_a_stop_token(folder, onnx, tmp_path):
    """Declare a token the model writes mid-reply as a stop token (generation_config.json, the
    folder's contract); generation must end right after it."""
    import json
    import shutil

    ids = prompt_ids(folder, PROMPTS[0])
    config = GenerationConfig(max_new_tokens=12, repetition_penalty=10.0)  # varied tokens, still greedy
    free = [t.id for t in onnx.generate(ids, config)]
    cut = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    copy = shutil.copytree(folder.path, tmp_path / "model")
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [free[cut]]}))
    stopped = [t.id for t in OnnxGenerator(ModelFolder(copy)).generate(ids, config)]
    assert stopped == free[: cut + 1]


def test_sampler_filters():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    top1 = Sampler(GenerationConfig(temperature=1.0, top_k=1, seed=0), vocab_size=4, prompt_ids=[])
    assert {top1.pick(logits) for _ in range(20)} == {0}
    nucleus = Sampler(GenerationConfig(temperature=1.0, top_p=0.7, seed=0), vocab_size=4, prompt_ids=[])
    assert {nucleus.pick(logits) for _ in range(200)} == {0, 1}
    penalised = Sampler(GenerationConfig(repetition_penalty=100.0), vocab_size=4, prompt_ids=[0])
    assert penalised.pick(logits) == 1  # token 0 was in the prompt
    assert np.isclose(np.exp(log_softmax(logits)).sum(), 1.0)


def test_bad_generation_settings_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)


@pytest.mark.parametrize(
    "text", ["😀🎉👩‍👩‍👧", "Ça coûte 5 €, très cher", "注文番号は 12345 です", "plain ascii"]
)
def test_streaming_never_splits_a_character(folder, text):
    decoder = IncrementalDecoder(folder.tokenizer)
    deltas = [decoder.push(i) for i in folder.encode(text)] + [decoder.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    multi_token_chars = len(folder.encode("😀")) > 1
    assert multi_token_chars or text != "😀🎉👩‍👩‍👧"


def test_auto_device_is_the_cpu_without_cuda():
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    assert choose_providers("cpu") == ["CPUExecutionProvider"]


def test_asking_for_cuda_without_it_says_what_to_install():
    import onnxruntime as ort

    from chatbot import ChatbotError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ChatbotError, match=r"chatbot\[gpu\]"):
        choose_providers("cuda")


def test_a_cuda_session_that_fell_back_to_the_cpu_is_said_plainly(folder):
    """ONNX Runtime opens a CPU session when its CUDA provider cannot load, and only logs why; the
    engine checks the session's real providers (here: a CPU build asked for CUDA directly)."""
    import onnxruntime as ort

    from chatbot.errors import ChatbotError
    from chatbot.fused import FusedSession
    from chatbot.generation import CPU, CUDA, open_session

    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: tests/test_cuda.py covers the GPU")
    with pytest.raises(ChatbotError, match="could not load its CUDA provider") as caught:
        open_session(folder.onnx_path, providers=[CUDA, CPU], hint="")
    message = str(caught.value)
    assert "CPUExecutionProvider only" in message and f"onnxruntime {ort.__version__}" in message
    assert "make install-gpu" in message and "--device cpu" in message and "CUDA 13" in message
    with pytest.raises(ChatbotError, match="could not load its CUDA provider"):
        FusedSession(folder.variant_path("cpu-int8"), folder.spec, providers=[CUDA, CPU], cuda_graphs=True)


def test_every_session_stops_its_threads_spinning_when_a_run_ends(tiny_model_dir):
    # two sessions in one process (int4 decodes, int8 prefills) otherwise take each other's cores
    # (README, "The scheduler's own cost"); the option must reach ONNX Runtime on every session
    from chatbot.fused import FusedSession
    from chatbot.loader import load_generator

    folder = ModelFolder(tiny_model_dir)
    generator = load_generator(folder, variant="cpu-int4")
    prefill = generator._rows.prefill_session  # white-box: both graphs (int8 keys and values: the
    sessions = [generator.session, getattr(prefill, "session", prefill)]  # prompts' float32 twin)
    assert all(isinstance(session, FusedSession) for session in sessions) and sessions[0] is not sessions[1]
    for session in (*sessions, OnnxGenerator(folder)):
        options = session.session.get_session_options()
        assert options.get_session_config_entry(STOP_SPINNING) == "1"
