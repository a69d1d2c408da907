"""``card.json``: what a model folder was built from and with.

The card is a small JSON object that travels with the model folder::

    {"format": 1, "name": ..., "created_at": ..., "base_model": ..., "description": ...,
     "versions": {"python": ..., "torch": ..., ...},
     "onnx": {"reference": {"path": "onnx/model.onnx", ..., "parity": {...}}}}

Later tools add more keys; every update here keeps the keys it does not know about. This module
writes cards; :func:`chatbot.card.read_card` is the one reader.
Writes are atomic (a temporary file in the same folder, then :func:`os.replace`), so a reader
never sees half a card.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from chatbot.card import CARD_FORMAT, card_path, read_card
from chatbot.paths import write_text_atomically

CARD_MODE = 0o644

# Distribution names whose versions are recorded, keyed as they appear in the card.
TRACKED_DISTRIBUTIONS = (
    "torch",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "datasets",
    "accelerate",
    "onnx",
    "onnxruntime",
)


def utc_now() -> str:
    """The current time as ISO-8601 UTC, e.g. ``2025-01-31T12:00:00+00:00``.

    The ``+00:00`` form (not ``Z``) keeps every card written so far in one format.
    """
    return datetime.now(UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str | None]:
    """The Python version and the installed versions of the tracked libraries.

    A library that is not installed is recorded as ``None`` rather than left out, so a card
    always says explicitly what was missing.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def new_card(*, name: str, base_model: str, description: str = "") -> dict[str, Any]:
    """A fresh card stamped with the current time and library versions."""
    return {
        "format": CARD_FORMAT,
        "name": name,
        "created_at": utc_now(),
        "base_model": base_model,
        "description": description,
        "versions": library_versions(),
    }


def write_card(model_dir: str | os.PathLike[str], card: Mapping[str, Any]) -> Path:
    """Write ``card`` into ``model_dir`` atomically and return the card's path."""
    path = card_path(model_dir)
    text = json.dumps(card, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    mode = path.stat().st_mode & 0o777 if path.exists() else CARD_MODE
    write_text_atomically(path, text, mode=mode)
    return path


def update_card(model_dir: str | os.PathLike[str], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into the card recursively, write it, and return the new card.

    Nested objects are merged key by key, so unknown keys (also inside ``"onnx"`` and the
    like) survive; any other value in ``changes`` replaces the old one.
    """
    card = _merge(read_card(model_dir), changes)
    write_card(model_dir, card)
    return card


def set_card_entry(model_dir: str | os.PathLike[str], keys: Sequence[str], value: Any) -> dict[str, Any]:
    """Replace the entry at the nested ``keys`` path (creating parents), write, return the card.

    Unlike :func:`update_card`, the entry itself is replaced as a whole, so a re-export does not
    keep stale fields of the previous record; its siblings are kept.
    """
    if not keys:
        raise ValueError("keys must name at least one entry")
    card = read_card(model_dir)
    parent = card
    for key in keys[:-1]:
        child = parent.get(key)
        parent[key] = child = child if isinstance(child, dict) else {}
        parent = child
    parent[keys[-1]] = value
    write_card(model_dir, card)
    return card


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``changes`` (``base`` is modified and returned)."""
    for key, value in changes.items():
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            base[key] = _merge(old, value)
        else:
            base[key] = value
    return base
