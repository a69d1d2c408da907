"""Writing files so that readers never see half of one. (Where things are kept: chatbot.settings.)"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
