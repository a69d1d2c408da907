"""Keys and values kept in int8 by the CPU graphs (the default; ``chatbot export --kv-cache float``
keeps them in float32): one scale per channel, calibrated at export.

A decode step reads every cached key and value of its rows: in float32, 12 layers × 2 × 768 × 4
bytes a position on GPT-2 124M, 377 MB a step for 32 conversations at 160 positions, which made
attention half of such a step (README, "Speed"). ONNX Runtime's CPU ``GroupQueryAttention``
(1.31 and later) can keep the cache in int8 with a fixed scale per channel (``k_quant_type`` /
``v_quant_type`` "PER_CHANNEL", ``kv_cache_bit_width`` 8, ``k_scale`` and ``v_scale`` inputs of
heads × head_dim): it stores ``round(x / scale)`` clipped to -128..127 and attends over
``q · scale``. A quarter of the bytes and the memory: a 32-row attention step at 180 positions
took 0.38 ms a layer against 0.94 in float32. But its attention over several new positions (a
prompt, a drafted step) is ~3× slower than float32's, so prompts run on the int8 graph's
float32-cache twin (``prefill.onnx``) and are quantised into the cache with these scales
(``chatbot.fused.QuantizingPrefill``; README, "Fast graphs", weighs the two).

The scales are fixed in the graph, so they are measured once, here: the reference export
(``onnx/model.onnx``, float32) runs calibration sequences (the chat template's conversation and
random ids, :func:`training.export.parity.parity_sequences` with a seed of its own, so the
parity check is not run on the sequences the scales were fitted to), each channel's largest
|key| and |value| over every position is found, and its scale leaves :data:`MARGIN` of headroom
above it (a value beyond the range is clipped to it). Computed from the reference, not from the
variant being built, so every CPU variant of a folder gets the same scales and the int8 graph can
prefill the int4 graph's cache (``chatbot.loader``); :func:`fingerprint` names them in the card.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from training.export.parity import MAX_PARITY_LENGTH, load_session, parity_sequences, prompt_presents

KV_CACHES = ("float", "int8")  # how a graph keeps keys and values (`chatbot export --kv-cache`)
DEFAULT_KV_CACHE = "int8"  # prompts run on a float32 twin (chatbot.fused.QuantizingPrefill)
MARGIN = 1.25  # the scale covers 1.25 × the largest magnitude calibration saw
CALIBRATION_SEQUENCES = 8
CALIBRATION_SEED = 1  # the parity check uses PARITY_SEED (0)
LEVELS = 127


def calibrate_kv_scales(folder: Path, *, sequences: int = CALIBRATION_SEQUENCES) -> np.ndarray:
    """(n_layer, 2, n_head * head_dim) float32: each layer's key and value scale per channel."""
    from chatbot.folder import ModelFolder

    spec = ModelFolder(folder).spec
    session = load_session(folder / "onnx" / "model.onnx")
    limit = min(spec.n_positions, MAX_PARITY_LENGTH)
    largest = np.zeros((spec.n_layer, 2, spec.n_head * spec.head_dim), dtype=np.float32)
    for ids in parity_sequences(folder, sequences, 0, limit, spec.vocab_size, CALIBRATION_SEED):
        presents = prompt_presents(session, ids)
        for layer in range(spec.n_layer):
            for side, kind in enumerate(("key", "value")):
                cached = presents[f"present.{layer}.{kind}"][0]  # (heads, positions, head_dim)
                seen = np.abs(cached).max(axis=1).reshape(-1)  # per channel: head-major
                np.maximum(largest[layer, side], seen, out=largest[layer, side])
    scales = largest * MARGIN / LEVELS
    scales[scales == 0] = 1.0 / LEVELS  # a channel that never moved
    return scales.astype(np.float32)


def recorded_scales(folder: Path, variant: str) -> np.ndarray | None:
    """The scales ``variant`` of ``folder`` keeps its int8 keys and values with, read back from
    the file its card entry names (so a graph built after it can share its cache without
    calibrating again); None where it keeps them in float."""
    from chatbot.card import read_card

    kept = ((read_card(folder).get("onnx") or {}).get(variant) or {}).get("kv_cache") or {}
    return np.load(folder / kept["scales_file"]) if kept.get("scales_file") else None


def fingerprint(scales: np.ndarray) -> str:
    """A short name for a set of scales: two graphs whose caches interchange share it."""
    return hashlib.sha256(np.ascontiguousarray(scales, dtype=np.float32).tobytes()).hexdigest()[:16]
