"""What the CPU's int8 instructions are, and what that means for the int8 graphs.

ONNX Runtime multiplies uint8 activations by int8 weights with the best instructions the CPU has:

* ``avx2``: ``vpmaddubsw`` multiplies pairs and sums each pair into a *saturating* int16, so
  255 x 127 x 2 overflows: weights must stay within ±63 (7 bits) with uint8 activations, or the
  activations within 0..127 (7 bits, around 64) with 8-bit weights;
* ``vnni`` (AVX-512 VNNI, AVX-VNNI) and ``amx``: the products are summed in int32, exactly, so
  8-bit weights (±127) with 8-bit activations are exact.

The int8 graph's weights are chosen when it is built (``training.export.fused_graph``: 8 bits on
``vnni``/``amx``, 7 on ``avx2``, recorded in the card as ``weight_levels``) and its activations
when it is loaded (:func:`int8_initializers`): a graph with 8-bit weights served on an AVX2-only CPU
quantises its activations to 7 bits, so a folder built on one machine serves correctly on any.

Example::

    from chatbot.cpu import int8_kind
    int8_kind()  # "vnni" on an AVX-512 VNNI machine, unless $CHATBOT_CPU says otherwise
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

import numpy as np

from chatbot import settings
from chatbot.errors import ChatbotError

INT8_KINDS = ("avx2", "vnni", "amx")
# Per activation scheme, the int8 graph's initializers that quantise each row (one name each)
ACTIVATIONS: dict[str, dict[str, np.ndarray]] = {
    "u8": {"int8.inv_levels": np.array(1 / 127, np.float32), "int8.zero_point": np.array(128, np.uint8)},
    "u7": {"int8.inv_levels": np.array(1 / 63, np.float32), "int8.zero_point": np.array(64, np.uint8)},
}
# cpuinfo flags (Linux) and numpy's feature names, per kind, the strongest first
_FLAGS = {"amx": {"amx_int8"}, "vnni": {"avx512_vnni", "avx_vnni"}}
_NUMPY_FEATURES = {"amx": {"AMX_INT8"}, "vnni": {"AVX512VNNI", "AVXVNNI"}}


def int8_kind() -> str:
    """``$CHATBOT_CPU`` when set, else this CPU's int8 kind: amx, vnni or avx2 (anything
    without VNNI counts as avx2, the kind that needs the most care)."""
    wanted = settings.cpu()
    if wanted == "auto":
        return detected_int8_kind()
    if wanted not in INT8_KINDS:
        raise ChatbotError(
            f"CHATBOT_CPU={wanted!r} is not a kind of int8 CPU",
            hint=f"set it to auto (detect it), or one of {', '.join(INT8_KINDS)}",
        )
    return wanted


@functools.cache
def detected_int8_kind() -> str:
    """The CPU's int8 kind from ``/proc/cpuinfo``'s flags, else numpy's CPU features."""
    features = _cpuinfo_flags()
    table = _FLAGS
    if not features:
        features, table = _numpy_features(), _NUMPY_FEATURES
    for kind, needs in table.items():
        if features & needs:
            return kind
    return "avx2"


@functools.cache
def cpu_features() -> frozenset[str]:
    """This CPU's features: ``/proc/cpuinfo``'s flags, else numpy's names for them (empty where
    neither says)."""
    return frozenset(_cpuinfo_flags() or _numpy_features())


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):  # every core lists the same flags
            return set(line.partition(":")[2].split())
    return set()


def _numpy_features() -> set[str]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    import importlib

    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy 2, 1
        try:
            features = importlib.import_module(module).__cpu_features__
        except (ImportError, AttributeError):
            continue
        return {name for name, present in features.items() if present}
    return set()


def int8_activations(entry: dict[str, Any], kind: str | None = None) -> str:
    """How the int8 graph of card entry ``entry`` quantises its activations on a ``kind`` CPU
    (default: this one): "u7" for 8-bit weights on AVX2, "u8" otherwise."""
    full = int(entry.get("weight_levels", 63)) > 63
    return "u7" if full and (kind or int8_kind()) == "avx2" else "u8"


def int8_initializers(entry: dict[str, Any], kind: str | None = None) -> dict[str, np.ndarray]:
    """The initializers to load the int8 graph of ``entry`` with on a ``kind`` CPU (none where the
    graph's own serve: graphs with 7-bit weights, and every graph on VNNI or AMX)."""
    scheme = int8_activations(entry, kind)
    return dict(ACTIVATIONS[scheme]) if scheme != "u8" else {}
