"""Slack's text in and out: what a person typed, read plainly; what the bot writes, escaped."""

from __future__ import annotations

import re

LINK = re.compile(r"<([^>|]+)(?:\|([^>]*))?>")


def escape(text: str) -> str:
    """Slack mrkdwn: ``&``, ``<`` and ``>`` escaped, so model output never forms a mention or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain_text(text: str, *, bot_user_id: str) -> str:
    """What a person typed, from Slack's markup: our mention dropped, links and mentions readable."""
    text = text.replace(f"<@{bot_user_id}>", " ")

    def readable(match: re.Match[str]) -> str:
        target, label = match.group(1), match.group(2)
        if label:
            return label
        return "@" + target[1:] if target.startswith(("@", "#")) else target

    text = LINK.sub(readable, text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]+", " ", text).strip()
