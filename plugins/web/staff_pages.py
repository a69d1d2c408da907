"""The staff console's HTML: three pages (queue, conversation, review) and the sign-in form, in
``staff_templates/``.

Jinja2 escapes everything a customer or a staff member wrote; the pages' scripts write it back
with ``textContent`` only. The scripts read the console's JSON every :data:`REFRESH_MS`
milliseconds, so the queue and a conversation stay live without a reload; every action is a plain
form, so the console works without them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

REFRESH_MS = 2000
TEMPLATES = Path(__file__).with_name("staff_templates")

_ENVIRONMENT = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
)


def render(page: str, **values: Any) -> str:
    """The HTML of ``page`` ("login", "queue", "conversation" or "review")."""
    return _ENVIRONMENT.get_template(f"{page}.html").render(refresh_ms=REFRESH_MS, **values)
