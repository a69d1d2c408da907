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
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from chatbot.card import CARD_FILE
from chatbot.errors import ExportError
from chatbot.types import Progress
from training.card import new_card, set_card_entry, utc_now, write_card
from training.export.parity import check_model_folder, measure_parity, temporary_folder

TASK = "text-generation-with-past"
EXPORTERS = ("chatbot", "optimum")
ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx_data"
VARIANT = "reference"


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
    with temporary_folder(folder) as tmp:
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
    from training.export.standard_graph import BUILDER

    distribution, name = ("optimum-onnx", "optimum-onnx") if exporter == "optimum" else ("chatbot", BUILDER)
    try:
        return f"{name} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"{name} (version unknown)"


def _write_reference(folder: Path, output: Path) -> None:
    """Write GPT-2's reference graph for ``folder`` into ``output`` (training.export.standard_graph)."""
    from training.export.fused_graph import folder_config, load_weights
    from training.export.standard_graph import build_reference, save_reference

    try:
        config = folder_config(folder)
    except ExportError as error:  # not GPT-2, or a GPT-2 option the writer does not know
        raise ExportError(
            error.message.replace("graph builder", "reference writer"),
            hint="export it with optimum's exporter: `chatbot export --exporter optimum` "
            'in an environment with `chatbot[optimum]` (README, "optimum")',
        ) from error
    save_reference(build_reference(config, load_weights(folder)), output / ONNX_FILE)


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
