"""The native attention (chatbot.kernels): built here by the machine's C compiler, run by ONNX
Runtime as a custom operator in place of GroupQueryAttention over an int8 cache, against ONNX
Runtime's own kernel on the same inputs and on a real fused graph."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from chatbot import kernels
from chatbot.cpu import cpu_features
from chatbot.errors import ChatbotError, ModelFolderError
from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession, QuantizingPrefill
from chatbot.generation import CPU, open_session
from chatbot.loader import load_generator
from chatbot.scheduler import BatchingGenerator
from training.export.fused_graph import takes_query_lengths

HEADS, LENGTH = 4, 64

# every instruction path of attention.c this machine can run: its own, AVX2 alone, plain C
PATHS = [("-march=native",)]
if {"avx2", "AVX2"} & cpu_features():
    PATHS.append(("-march=x86-64-v3",))
PATHS.append(("-march=x86-64",) if {"sse2", "SSE2"} & cpu_features() else ("-O1",))


@pytest.fixture(autouse=True)
def fresh_choice() -> Iterator[None]:
    """Each test decides afresh whether the kernel is built (the process keeps the answer)."""
    kernels.attention_library.cache_clear()
    yield
    kernels.attention_library.cache_clear()


def _attention(
    mine: str | None, rows: int, sequence: int, head_dim: int, padded: bool
) -> ort.InferenceSession:
    """One attention node over an int8 cache: ONNX Runtime's (``mine`` None) or the library at ``mine``."""
    hidden = HEADS * head_dim
    inputs = [
        helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [rows, sequence, 3 * hidden]),
        helper.make_tensor_value_info("past_k", TensorProto.INT8, [rows, HEADS, LENGTH, head_dim]),
        helper.make_tensor_value_info("past_v", TensorProto.INT8, [rows, HEADS, LENGTH, head_dim]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [rows]),
        helper.make_tensor_value_info("total", TensorProto.INT32, []),
    ]
    names = [
        "qkv",
        "",
        "",
        "past_k",
        "past_v",
        "seqlens_k",
        "total",
        "",
        "",
        "",
        "",
        "",
        "k_scale",
        "v_scale",
    ]
    if padded:
        inputs.append(helper.make_tensor_value_info("query_seqlens", TensorProto.INT32, [rows]))
        names += ["", "", "query_seqlens"]
    scales = [
        numpy_helper.from_array(np.linspace(lo, hi, hidden, dtype=np.float32), name)
        for name, lo, hi in (("k_scale", 0.01, 0.04), ("v_scale", 0.04, 0.01))
    ]
    node = helper.make_node(
        "GroupQueryAttention",
        names,
        ["out", "present_k", "present_v"],
        domain="com.microsoft",
        num_heads=HEADS,
        kv_num_heads=HEADS,
        scale=0.3,
        k_quant_type="PER_CHANNEL",
        v_quant_type="PER_CHANNEL",
        kv_cache_bit_width=8,
    )
    outputs = [
        helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("present_k", TensorProto.INT8, None),
        helper.make_tensor_value_info("present_v", TensorProto.INT8, None),
    ]
    model = helper.make_model(
        helper.make_graph([node], "attention", inputs, outputs, scales),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if mine is not None:
        assert kernels.replace_attention(model) == 1
        options.register_custom_ops_library(mine)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], cache: list[np.ndarray]) -> np.ndarray:
    """A step with the cache bound in place, as chatbot.fused binds it; the attention's output."""
    binding = session.io_binding()
    binding.bind_output("out", "cpu")
    for (name, present), buffer in zip(
        (("past_k", "present_k"), ("past_v", "present_v")), cache, strict=True
    ):
        binding.bind_input(name, "cpu", 0, np.int8, list(buffer.shape), buffer.ctypes.data)
        binding.bind_output(present, "cpu", 0, np.int8, list(buffer.shape), buffer.ctypes.data)
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    session.run_with_iobinding(binding)
    return np.asarray(binding.get_outputs()[0].numpy())


CASES = [  # rows, new positions, padded rows (ONNX Runtime takes several positions over a cache
    (1, 1, False),  # for one row only, or for several with query_seqlens, 1.32 and later)
    (5, 1, False),
    (1, 6, False),
    (4, 5, True),
]


@pytest.mark.parametrize("flags", PATHS, ids=lambda f: " ".join(f))
@pytest.mark.parametrize("head_dim", [64, 16, 24])
def test_the_native_attention_computes_what_onnx_runtimes_does(
    flags: tuple[str, ...], head_dim: int, tmp_path: Path
) -> None:
    library = str(kernels.build_library(flags, folder=tmp_path))
    rng = np.random.default_rng(head_dim)
    for rows, sequence, padded in CASES:
        if padded and not takes_query_lengths():
            continue
        fed = rng.integers(1, sequence + 1, rows) if padded else np.full(rows, sequence)
        ends = rng.integers(sequence, LENGTH - 1, rows)  # the cache before holds ends - fed positions
        feeds = {
            "qkv": rng.standard_normal((rows, sequence, 3 * HEADS * head_dim)).astype(np.float32),
            "seqlens_k": (ends - 1).astype(np.int32),
            "total": np.array(ends.max(), dtype=np.int32),
        }
        if padded:
            feeds["query_seqlens"] = fed.astype(np.int32)
        before = [rng.integers(-128, 128, (rows, HEADS, LENGTH, head_dim)).astype(np.int8) for _ in range(2)]
        theirs_cache, mine_cache = [b.copy() for b in before], [b.copy() for b in before]
        theirs = _run(_attention(None, rows, sequence, head_dim, padded), feeds, theirs_cache)
        mine = _run(_attention(library, rows, sequence, head_dim, padded), feeds, mine_cache)
        for a, b in zip(theirs_cache, mine_cache, strict=True):
            np.testing.assert_array_equal(a, b)  # the same new keys and values, at the same places
        assert not all(np.array_equal(a, b) for a, b in zip(before, mine_cache, strict=True))
        for row in range(rows):  # a padded position's output is never read
            np.testing.assert_allclose(mine[row, : fed[row]], theirs[row, : fed[row]], rtol=1e-4, atol=1e-5)


def test_a_fused_graph_serves_on_the_native_attention_with_the_same_replies(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = ModelFolder(tiny_model_dir)
    replies: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for attention in ("native", "onnxruntime"):
        monkeypatch.setenv("CHATBOT_ATTENTION", attention)
        kernels.attention_library.cache_clear()
        session = FusedSession(folder.variant_path("cpu-int8"), folder.spec)
        assert session.attention == attention
        assert getattr(session.session, "_model_bytes", None) is None  # not held for the session's life
        rng = np.random.default_rng(0)
        lengths = np.array([9, 3, 14])
        cache = session.new_cache(len(lengths), 64)
        tokens = np.zeros(len(lengths), dtype=np.int64)
        for row, length in enumerate(lengths):  # each prompt alone, then the rows decode together
            prompt = rng.integers(0, folder.spec.vocab_size, (1, length))
            tokens[row] = session.step(cache, row, prompt, np.zeros(1, np.int64)).next_token[0]
        written, logits = [tokens.copy()], []
        for _ in range(12):
            step = session.step(cache, 0, tokens[:, None], lengths)
            lengths = lengths + 1
            tokens = step.next_token.astype(np.int64)
            written.append(tokens.copy())
            logits.append(step.logits.copy())
        replies[attention] = (np.array(written), np.array(logits))
    np.testing.assert_array_equal(replies["native"][0], replies["onnxruntime"][0])
    np.testing.assert_allclose(replies["native"][1], replies["onnxruntime"][1], rtol=1e-3, atol=1e-3)


def test_graphs_without_an_int8_cache_keep_onnx_runtimes_attention(tiny_model_dir: Path) -> None:
    folder = ModelFolder(tiny_model_dir)
    twin = folder.path / folder.card["onnx"]["cpu-int8"]["prefill"]["path"]  # a float32 cache
    assert kernels.native_graph(twin) is None
    assert FusedSession(twin, folder.spec).attention == "onnxruntime"
    # served: the decode graph on the native attention where it builds, the twin's prompts on ONNX
    # Runtime's (the loader does not even look: it knows the twin keeps float keys and values)
    generator = load_generator(folder, device="cpu", variant="cpu-int8")
    assert isinstance(generator, BatchingGenerator)
    native = kernels.attention_library() is not None
    assert generator.session.attention == ("native" if native else "onnxruntime")
    prefill = generator.prefill_session
    assert isinstance(prefill, QuantizingPrefill) and prefill.session.attention == "onnxruntime"


def test_without_a_compiler_onnx_runtimes_attention_serves_and_says_so(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = ModelFolder(tiny_model_dir)
    monkeypatch.setenv("CC", "no-such-compiler")
    with caplog.at_level(logging.WARNING, logger="chatbot.kernels"):
        session = FusedSession(folder.variant_path("cpu-int8"), folder.spec)
    assert session.attention == "onnxruntime"
    assert "no C compiler: 'no-such-compiler' is not on PATH" in caplog.text
    monkeypatch.setenv("CHATBOT_ATTENTION", "native")  # asked for by name: an error that says what to do
    kernels.attention_library.cache_clear()
    with pytest.raises(kernels.KernelError) as refused:
        FusedSession(folder.variant_path("cpu-int8"), folder.spec)
    assert "apt-get install gcc" in str(refused.value.hint)


def test_a_compiler_that_fails_is_reported_with_what_it_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "cc"
    script = [
        "#!/bin/sh",
        'if [ "$1" = --version ]; then echo "cc 1.0"; exit 0; fi',
        'echo "cc: out of cheese" >&2',
        "exit 1",
    ]
    broken.write_text("\n".join(script) + "\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with pytest.raises(kernels.KernelError, match="out of cheese"):
        kernels.build_library(folder=tmp_path / "built")
    assert not list((tmp_path / "built").glob("*.so"))  # nothing half-built is kept


def test_a_cache_folder_it_cannot_write_is_said(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(kernels.KernelError, match="cannot write the attention kernel") as refused:
        kernels.build_library(folder=blocked / "kernels")
    assert "XDG_CACHE_HOME" in str(refused.value.hint)


def test_the_library_is_built_once_per_source_compiler_and_cpu(tmp_path: Path) -> None:
    first = kernels.build_library(folder=tmp_path)
    built = first.stat().st_mtime_ns
    assert kernels.build_library(folder=tmp_path) == first and first.stat().st_mtime_ns == built
    other = kernels.build_library(("-march=x86-64",) if len(PATHS) > 2 else ("-O1",), folder=tmp_path)
    assert other != first and sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


def test_the_attention_setting_is_checked(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setenv("CHATBOT_ATTENTION", "fastest")
    with pytest.raises(ChatbotError, match="CHATBOT_ATTENTION='fastest'"):
        kernels.attention_library()
    monkeypatch.setenv("CHATBOT_ATTENTION", "onnxruntime")
    folder = ModelFolder(tiny_model_dir)
    assert FusedSession(folder.variant_path("cpu-int8"), folder.spec).attention == "onnxruntime"


def test_a_graph_that_is_not_onnx_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ModelFolderError, match=f"{bad} cannot be loaded by ONNX Runtime") as refused:
        open_session(bad, providers=[CPU], hint="build it again", native_attention=True)
    assert refused.value.hint == "build it again"
