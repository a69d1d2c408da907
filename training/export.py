"""Export a model folder to ONNX and prove that the export computes what PyTorch computes.

:func:`export_onnx` runs the optimum exporter (task ``text-generation-with-past``) into a
temporary folder inside the model folder, compares ONNX Runtime against PyTorch on several
sequences (a prefill, then single-token decode steps through the KV cache), and only when the
largest logit difference is within tolerance moves ``model.onnx`` (and ``model.onnx_data``,
when the exporter writes external data) into ``MODEL_DIR/onnx/`` and records the export in
``card.json``. An export that fails the check is never written.

torch, transformers, optimum and onnxruntime are imported inside the functions, never at
module import.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatbot.errors import ExportError, ModelFolderError
from training.card import CARD_FILE, new_card, set_card_entry, utc_now, write_card

if TYPE_CHECKING:
    import numpy as np
    from onnxruntime import InferenceSession

TASK = "text-generation-with-past"
EXPORTERS = ("chatbot", "optimum")
ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx_data"
VARIANT = "reference"
REQUIRED_FILES = ("config.json", "model.safetensors")
PARITY_SEED = 0
MAX_PARITY_LENGTH = 256  # longest sequence compared; bounded to keep big models quick

PARITY_CONVERSATION = (
    {"role": "system", "content": "You are a helpful customer-service assistant."},
    {"role": "user", "content": "Hi! My order #48213 hasn't arrived yet — can you check? 📦"},
    {"role": "assistant", "content": "Of course. It left our warehouse yesterday."},
    {"role": "user", "content": "Merci ! When will it arrive?"},
)

Progress = Callable[[str], None]


def export_onnx(
    model_dir: str | os.PathLike[str],
    *,
    tolerance: float = 1e-3,
    sequences: int = 4,
    decode_steps: int = 4,
    exporter: str = "chatbot",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Export ``model_dir`` to ``onnx/model.onnx`` after a parity check; return the parity record.

    ``exporter`` is ``"chatbot"`` (GPT-2 written from its weights) or ``"optimum"`` (see the
    module docstring). The record is ``{"max_abs_diff", "tolerance", "sequences",
    "decode_steps"}`` and is also stored in ``card.json`` under ``onnx.reference.parity``.
    Raises :class:`ModelFolderError` for a missing or incomplete folder and
    :class:`ExportError` when the exporter fails or the largest logit difference exceeds
    ``tolerance`` (the previous export is then left as it was).
    """
    folder = check_model_folder(model_dir)
    _check_options(tolerance=tolerance, sequences=sequences, decode_steps=decode_steps)
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}", hint=f"choose one of {', '.join(EXPORTERS)}")
    say = progress or _silent
    with _temporary_folder(folder) as tmp:
        say(f"exporting {folder} to ONNX ({exporter_name(exporter)})")
        if exporter == "optimum":
            _run_optimum(folder, tmp)
        else:
            _write_reference(folder, tmp)
        say(f"checking parity with PyTorch on {sequences} sequences, {decode_steps} decode steps")
        diff = measure_parity(folder, tmp / ONNX_FILE, sequences=sequences, decode_steps=decode_steps)
        _check_parity(diff, tolerance)
        used_opset = onnx_opset(tmp / ONNX_FILE)
        _install(tmp, folder / ONNX_DIR)
    parity = {
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "sequences": sequences,
        "decode_steps": decode_steps,
    }
    _record(folder, _reference_entry(parity, used_opset, exporter))
    say(f"wrote {ONNX_DIR}/{ONNX_FILE} (opset {used_opset}, max abs diff {diff:.3g})")
    return parity


def _silent(message: str) -> None:
    """The default progress callback: say nothing."""


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


def _check_options(*, tolerance: float, sequences: int, decode_steps: int) -> None:
    """Refuse option values that would make the parity check meaningless."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, not {tolerance!r}")
    if sequences < 1:
        raise ValueError(f"sequences must be at least 1, not {sequences!r}")
    if decode_steps < 1:
        raise ValueError(f"decode_steps must be at least 1 (the KV cache), not {decode_steps!r}")


def exporter_name(exporter: str = "chatbot") -> str:
    """The exporter as recorded in the card: ``chatbot.training.portable 0.1.0`` or
    ``optimum-onnx 0.1.0``."""
    from training.portable import BUILDER

    distribution, name = ("optimum-onnx", "optimum-onnx") if exporter == "optimum" else ("chatbot", BUILDER)
    try:
        return f"{name} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"{name} (version unknown)"


def _write_reference(folder: Path, output: Path) -> None:
    """Write GPT-2's reference graph for ``folder`` into ``output`` (:mod:`training.portable`)."""
    from training.graph import load_weights, read_config
    from training.portable import build_reference, save_reference

    try:
        config = read_config(_read_json(folder / "config.json"), folder)
    except ExportError as error:  # not GPT-2, or a GPT-2 option the writer does not know
        raise ExportError(
            error.message.replace("graph builder", "reference writer"),
            hint="export it with optimum's exporter: `chatbot export --exporter optimum` "
            'in an environment with `chatbot[optimum]` (README, "optimum")',
        ) from error
    save_reference(build_reference(config, load_weights(folder)), output / ONNX_FILE)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelFolderError(f"cannot read {path}: {error}", hint="build the folder again") from error
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is not a JSON object", hint="build the folder again")
    return data


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the known, harmless noise of a TorchScript ONNX export (restored afterwards).

    The tracer warns about Python conditions it freezes and about the legacy exporter; the
    parity check is what tells whether the export is right, so these warnings add nothing.
    """
    from optimum.utils import logging as optimum_logging
    from torch.jit import TracerWarning
    from transformers.utils import logging as transformers_logging

    libraries = (transformers_logging, optimum_logging)
    levels = [library.get_verbosity() for library in libraries]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"optimum\.exporters")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        for library in libraries:
            library.set_verbosity_error()
        try:
            yield
        finally:
            for library, level in zip(libraries, levels, strict=True):
                library.set_verbosity(level)


@contextlib.contextmanager
def _temporary_folder(folder: Path) -> Iterator[Path]:
    """A scratch folder inside ``folder`` (same file system: moves are atomic), always removed."""
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-tmp-", dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_optimum(folder: Path, output: Path) -> None:
    """Run optimum's exporter on ``folder`` into ``output``; wrap its failures in ExportError."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as error:
        raise ExportError(
            f"--exporter optimum needs optimum-onnx, which is not installed ({error})",
            hint="install it in an environment of its own: `pip install 'chatbot[optimum]'` "
            '(README, "optimum"), or export with the default exporter',
        ) from error
    try:
        with _quiet_exporter():
            main_export(str(folder), output=output, task=TASK, do_validation=False, local_files_only=True)
    except Exception as error:  # the exporter raises many unrelated types
        raise ExportError(
            f"the ONNX exporter failed on {folder}: {type(error).__name__}: {error}",
            hint="export with a newer optimum-onnx or report the model config",
        ) from error
    if not (output / ONNX_FILE).is_file():
        raise ExportError(
            f"the ONNX exporter wrote no {ONNX_FILE} for {folder}",
            hint="export with a newer optimum-onnx or report the model config",
        )


def _check_parity(diff: float, tolerance: float) -> None:
    """Raise :class:`ExportError` when ``diff`` exceeds ``tolerance`` (or is not a number)."""
    if diff <= tolerance:
        return
    raise ExportError(
        f"the ONNX export differs from PyTorch by up to {diff:.3g} in the logits, more than the "
        f"tolerance {tolerance:.3g}; nothing was written",
        hint="report the model config (and the card's versions) as a bug",
    )


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
    session = _load_session(Path(onnx_path))
    limit = min(int(model.config.n_positions), MAX_PARITY_LENGTH)
    vocab = int(model.config.vocab_size)
    worst = 0.0
    for ids in _parity_sequences(Path(model_dir), sequences, decode_steps, limit, vocab, seed):
        prefill = max(1, len(ids) - decode_steps)
        diff = _max_abs_diff(_torch_logits(model, ids), onnx_logits(session, ids, prefill))
        worst = max(worst, diff)
    return worst


def _load_torch_model(folder: Path) -> Any:
    """The folder's causal LM in fp32, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()


def _load_session(path: Path) -> InferenceSession:
    """An ONNX Runtime CPU session for ``path`` that logs only errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _parity_sequences(
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

    from chatbot.folder import chat_template

    config = folder / "tokenizer_config.json"
    text = chat_template(_read_json(config), config).render(
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


def onnx_opset(path: str | os.PathLike[str]) -> int:
    """The default-domain opset of the ONNX model at ``path`` (external data is not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    default = (entry for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    return int(next(default).version)


def _install(tmp: Path, onnx_dir: Path) -> None:
    """Move the checked export from ``tmp`` into ``onnx_dir``, replacing an older one."""
    onnx_dir.mkdir(exist_ok=True)
    data = tmp / ONNX_DATA_FILE
    if data.exists():
        os.replace(data, onnx_dir / ONNX_DATA_FILE)
    else:
        (onnx_dir / ONNX_DATA_FILE).unlink(missing_ok=True)
    os.replace(tmp / ONNX_FILE, onnx_dir / ONNX_FILE)


def _reference_entry(parity: dict[str, Any], opset: int, exporter: str) -> dict[str, Any]:
    """The ``onnx.reference`` record of the card."""
    return {
        "path": f"{ONNX_DIR}/{ONNX_FILE}",
        "exporter": exporter_name(exporter),
        "task": TASK,
        "opset": opset,
        "exported_at": utc_now(),
        "parity": parity,
    }


def _record(folder: Path, entry: dict[str, Any]) -> None:
    """Store ``entry`` as ``onnx.reference`` in the card, creating a card when there is none."""
    if not (folder / CARD_FILE).exists():
        description = "card created by export_onnx: the folder had none"
        write_card(folder, new_card(name=folder.name, base_model="unknown", description=description))
    set_card_entry(folder, ("onnx", VARIANT), entry)
