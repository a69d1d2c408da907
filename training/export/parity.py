"""What an export is checked with: the same sequences through PyTorch and through ONNX Runtime.

:func:`measure_parity` compares the folder's PyTorch model with an ONNX graph of the exporter's
interface (a decoder with past key values), position by position: a prefill, then one token at a
time through the cache. The sequences (:func:`parity_sequences`) are one rendered chat and random
token ids. :mod:`training.export.reference` checks the reference export with it;
:mod:`training.export.fused_graph` checks the fast variants against that export with
:func:`onnx_logits` and the same sequences.

torch, transformers and onnxruntime are imported inside the functions, never at module import.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatbot.errors import ModelFolderError

if TYPE_CHECKING:
    import numpy as np
    from onnxruntime import InferenceSession

REQUIRED_FILES = ("config.json", "model.safetensors")
PARITY_SEED = 0
MAX_PARITY_LENGTH = 256  # longest sequence compared; bounded to keep big models quick

PARITY_CONVERSATION = (
    {"role": "system", "content": "You are a helpful customer-service assistant."},
    {"role": "user", "content": "Hi! My order #48213 hasn't arrived yet — can you check? 📦"},
    {"role": "assistant", "content": "Of course. It left our warehouse yesterday."},
    {"role": "user", "content": "Merci ! When will it arrive?"},
)


def check_model_folder(model_dir: str | os.PathLike[str]) -> Path:
    """``model_dir`` as a Path; :class:`ModelFolderError` if it or a required file is missing."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelFolderError(
            f"model folder {folder} does not exist",
            hint="build one with `chatbot train ...` or pass the right path",
        )
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise ModelFolderError(
                f"{folder / name} is missing",
                hint="the folder is incomplete: build it again with `chatbot train ...`",
            )
    return folder


@contextlib.contextmanager
def temporary_folder(folder: Path) -> Iterator[Path]:
    """A scratch folder inside ``folder`` (same file system: moves are atomic), always removed."""
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-tmp-", dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_parity(
    model_dir: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    *,
    sequences: int = 4,
    decode_steps: int = 4,
    seed: int = PARITY_SEED,
) -> float:
    """The largest absolute logit difference between PyTorch and ONNX Runtime.

    ``sequences`` token sequences of different lengths are compared: one rendered chat
    conversation (the folder's tokenizer and chat template) and random token ids from a
    generator seeded with ``seed``. ONNX Runtime runs a prefill over all but the last
    ``decode_steps`` tokens, then one token at a time feeding ``present.*`` back as
    ``past_key_values.*``; every position is compared with PyTorch's full-sequence logits.
    A NaN or infinite difference is reported as ``inf``.
    """
    model = _load_torch_model(Path(model_dir))
    session = load_session(Path(onnx_path))
    limit = min(int(model.config.n_positions), MAX_PARITY_LENGTH)
    vocab = int(model.config.vocab_size)
    worst = 0.0
    for ids in parity_sequences(Path(model_dir), sequences, decode_steps, limit, vocab, seed):
        prefill = max(1, len(ids) - decode_steps)
        diff = _max_abs_diff(_torch_logits(model, ids), onnx_logits(session, ids, prefill))
        worst = max(worst, diff)
    return worst


def _load_torch_model(folder: Path) -> Any:
    """The folder's causal LM in fp32, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()


def load_session(path: Path) -> InferenceSession:
    """An ONNX Runtime CPU session for ``path`` that logs only errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def parity_sequences(
    folder: Path, count: int, decode_steps: int, limit: int, vocab: int, seed: int
) -> list[list[int]]:
    """The chat conversation's ids plus ``count - 1`` random sequences of spread-out lengths."""
    import numpy as np

    chat = _chat_ids(folder)[:limit]
    rng = np.random.default_rng(seed)
    lengths = _spread_lengths(count - 1, shortest=decode_steps + 1, longest=limit)
    return [chat] + [rng.integers(0, vocab, size=n).tolist() for n in lengths]


def _spread_lengths(count: int, *, shortest: int, longest: int) -> list[int]:
    """``count`` lengths from ``shortest`` to ``longest``, spread evenly (longest last)."""
    shortest = min(shortest, longest)
    if count <= 1:
        return [longest] * count
    step = (longest - shortest) / (count - 1)
    return [round(shortest + i * step) for i in range(count)]


def _chat_ids(folder: Path) -> list[int]:
    """Token ids of :data:`PARITY_CONVERSATION` rendered with the folder's chat template.

    Rendered and encoded as the engine does (:mod:`chatbot.template` and ``tokenizers``), not by
    transformers: the folder may come from another transformers release than this environment's
    (``chatbot[optimum]`` runs transformers 4.57, which cannot load a tokenizer config of 5).
    """
    from tokenizers import Tokenizer

    from chatbot.folder import chat_template, read_json_object

    config = folder / "tokenizer_config.json"
    text = chat_template(read_json_object(config), config).render(
        list(PARITY_CONVERSATION), add_generation_prompt=True
    )
    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def _torch_logits(model: Any, ids: Sequence[int]) -> np.ndarray:
    """PyTorch's fp32 logits for the whole sequence, shape (length, vocab)."""
    import torch

    with torch.no_grad():
        output = model(input_ids=torch.tensor([list(ids)], dtype=torch.long), use_cache=False)
    return output.logits[0].float().numpy()


def onnx_logits(session: InferenceSession, ids: Sequence[int], prefill: int) -> np.ndarray:
    """ONNX Runtime's logits (length, vocab): a prefill of ``prefill`` tokens, then one token per step.

    Starts from an empty KV cache; ``prefill=len(ids)`` scores the whole sequence in one pass.
    """
    import numpy as np

    past = _empty_past(session)
    logits, past = _onnx_step(session, ids[:prefill], past_length=0, past=past)
    rows = [logits]
    for position in range(prefill, len(ids)):
        logits, past = _onnx_step(session, ids[position : position + 1], past_length=position, past=past)
        rows.append(logits)
    return np.concatenate(rows)


def prompt_presents(session: InferenceSession, ids: Sequence[int]) -> dict[str, np.ndarray]:
    """The reference graph's keys and values after ``ids`` in one pass: ``present.{layer}.{key|value}``,
    each (1, heads, len(ids), head_dim)."""
    _, past = _onnx_step(session, ids, past_length=0, past=_empty_past(session))
    return {name.replace("past_key_values.", "present.", 1): value for name, value in past.items()}


def _empty_past(session: InferenceSession) -> dict[str, np.ndarray]:
    """Zero-length ``past_key_values.*`` inputs (batch 1) in the dtypes the graph expects."""
    import numpy as np

    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    past = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values."):
            shape = [dim if isinstance(dim, int) else 0 for dim in spec.shape]
            shape[0] = 1
            past[spec.name] = np.zeros(shape, dtype=dtypes.get(spec.type, np.float32))
    return past


def _onnx_step(
    session: InferenceSession,
    ids: Sequence[int],
    *,
    past_length: int,
    past: dict[str, np.ndarray],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``ids`` after ``past_length`` cached tokens; return (logits, the next past)."""
    import numpy as np

    length = len(ids)
    feeds = {
        "input_ids": np.array([list(ids)], dtype=np.int64),
        "attention_mask": np.ones((1, past_length + length), dtype=np.int64),
        "position_ids": np.arange(past_length, past_length + length, dtype=np.int64)[None],
        **past,
    }
    wanted = {spec.name for spec in session.get_inputs()}
    names = [spec.name for spec in session.get_outputs()]
    outputs = dict(
        zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted}), strict=True)
    )
    present = {
        name.replace("present.", "past_key_values.", 1): value
        for name, value in outputs.items()
        if name.startswith("present.")
    }
    return outputs["logits"][0].astype(np.float32), present


def _max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    """The largest absolute difference; ``inf`` for mismatched shapes or non-finite values."""
    import numpy as np

    if expected.shape != actual.shape:
        return math.inf
    diff = float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64))))
    return diff if math.isfinite(diff) else math.inf
