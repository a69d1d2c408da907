"""Where the command line keeps things by default (XDG base directories)."""

from __future__ import annotations

import os
import tempfile
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


def write_text_atomically(path: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one.

    A temporary file in the same folder is written, flushed to disk and renamed over ``path``;
    on any failure it is removed and ``path`` is left as it was. ``mode`` is the new file's mode
    (mkstemp alone would make it private).
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
