"""The model card (``card.json``): what a model folder was built from and with. Read here, once.

Training writes cards (:mod:`training.card`); everything that reads one, the engine's
:class:`~chatbot.folder.ModelFolder`, the versions list and training itself, reads it with
:func:`read_card`, which refuses a card from a newer format than this code understands.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from chatbot.errors import ModelFolderError

CARD_FILE = "card.json"
CARD_FORMAT = 1


def card_path(model_dir: str | os.PathLike[str]) -> Path:
    """Where the card of ``model_dir`` lives."""
    return Path(model_dir) / CARD_FILE


def read_card(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The card of ``model_dir``.

    Raises :class:`ModelFolderError` when the card is missing, is not JSON, or comes from a
    newer card format than this code understands.
    """
    path = card_path(model_dir)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ModelFolderError(
            f"{path} is missing", hint="build the folder again with `chatbot train ...`"
        ) from error
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFolderError(
            f"{path} is not valid JSON: {error}", hint="fix or delete the file and re-export"
        ) from error
    if not isinstance(card, dict):
        raise ModelFolderError(f"{path} is not a JSON object", hint="fix or delete the file")
    version = card.get("format")
    if not isinstance(version, int) or version > CARD_FORMAT:
        raise ModelFolderError(
            f"{path} has card format {version!r}; this version reads format {CARD_FORMAT}",
            hint="upgrade the chatbot package",
        )
    return card
