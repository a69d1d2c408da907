"""Where the command line keeps things by default (XDG base directories)."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """``$XDG_DATA_HOME/chatbot`` (``~/.local/share/chatbot``): conversations."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "chatbot"


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/chatbot`` (``~/.cache/chatbot``): the demo model, rebuilt when missing."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatbot"


def default_store() -> str:
    """``$CHATBOT_STORE`` (a SQLite path or a SQLAlchemy URL), else a SQLite file in data_home()."""
    return os.environ.get("CHATBOT_STORE") or str(data_home() / "conversations.db")
