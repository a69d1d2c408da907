"""Log lines: one per event, on standard error, as text or (``CHATBOT_LOG_FORMAT=json``) JSON.

:func:`event` writes an event with the conversation it belongs to and its fields. What customers
typed and what the bot answered are left out unless ``CHATBOT_LOG_CONTENT=1``: logs travel to
places a conversation store does not. Secrets never reach a log line (the Slack channel also
scrubs its tokens from every record as a last line of defence).

>>> event(log, "reply", "web:3f2a", finish_reason="stop", reply_tokens=42)   # doctest: +SKIP
2026-11-23T14:55:01.123Z INFO chatbot.engine: reply conversation=web:3f2a finish_reason=stop reply_tokens=42
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from chatbot import settings

_HANDLER_NAME = "chatbot"


def content_logged() -> bool:
    """Whether message text may be logged (``CHATBOT_LOG_CONTENT=1``)."""
    return settings.log_content()


def event(
    logger: logging.Logger,
    name: str,
    conversation_id: str | None = None,
    *,
    level: int = logging.INFO,
    content: dict[str, str] | None = None,
    exc_info: BaseException | None = None,
    **fields: Any,
) -> None:
    """Log event ``name`` of ``conversation_id`` with ``fields``; ``content`` (message text) only
    when :func:`content_logged`."""
    if not logger.isEnabledFor(level):
        return
    if content and content_logged():
        fields.update(content)
    shown = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
    where = f" conversation={conversation_id}" if conversation_id else ""
    extra = {"event": name, "conversation_id": conversation_id, "fields": fields}
    logger.log(level, "%s%s %s", name, where, shown, extra=extra, exc_info=exc_info)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and (" " in value or not value):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, conversation_id, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "event": getattr(record, "event", None),
            "conversation_id": getattr(record, "conversation_id", None),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({key: value for key, value in fields.items() if key not in line})
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc(record.created)


def _utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure(
    *,
    chatbot_level: int = logging.INFO,
    stream: IO[str] | None = None,
    filters: Iterable[logging.Filter] = (),
) -> logging.Handler:
    """One handler on the root logger (replacing the one an earlier call installed): chatbot's
    loggers at ``chatbot_level``, everybody else's at warnings; text or JSON by ``$CHATBOT_LOG_FORMAT``."""
    wanted = settings.log_format()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if wanted == "json" else TextFormatter())
    for log_filter in filters:
        handler.addFilter(log_filter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("chatbot").setLevel(chatbot_level)
    return handler
