"""The Slack app's credentials and settings, from the environment only.

Tokens and the signing secret are never taken from a flag (a flag shows in `ps` and in shell
history), never printed, and never put in an error: ``repr`` shows which ones are set, and
:class:`RedactingFilter` scrubs them from any log record as a last line of defence.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from chatbot import ChannelError

APPS_PAGE = "https://api.slack.com/apps"
SLACK_API_URL = "https://slack.com/api/"
_ID = re.compile(r"[A-Z][A-Z0-9]{2,}")
_CALLED_GROUP = re.compile(r"<!subteam\^([A-Z0-9]+)(?:\|[^>]*)?>")

# Where each variable is found in the Slack app's settings page.
WHERE = {
    "SLACK_BOT_TOKEN": "the Bot User OAuth Token (xoxb-...) under OAuth & Permissions",
    "SLACK_SIGNING_SECRET": "the Signing Secret under Basic Information > App Credentials",
    "SLACK_APP_TOKEN": "an App-Level Token (xapp-...), scope connections:write, under Basic Information",
}


@dataclass(frozen=True, repr=False)
class SlackSettings:
    """What the Slack channel reads from the environment.

    * ``SLACK_BOT_TOKEN`` (required) — the bot's token.
    * ``SLACK_APP_TOKEN`` — set it to use Socket Mode (no public URL needed).
    * ``SLACK_SIGNING_SECRET`` — required in HTTP mode (Events API), to check every request.
    * ``SLACK_API_URL`` — the Web API's base URL (GovSlack, a corporate proxy, a test harness).
    * ``SLACK_HANDOVER_MENTION`` — who is called when a person should take over, in Slack's
      syntax: ``<!subteam^S0123>`` for a user group, ``<@U0123>`` for a person, ``<!here>``.
    * ``SLACK_STAFF_USERS`` — the support team's Slack user ids, comma-separated (``U1,U2``).
    * ``SLACK_STAFF_GROUP`` — a user group (``S0123``) whose members are the support team; by
      default the group ``SLACK_HANDOVER_MENTION`` calls, if it calls one. Staff members' words
      in a thread a person is asked into are the agent's, written by a person.
    * ``SLACK_SUPPORT_CHANNEL`` — a channel id (``C0123``): handovers from the other channels (the
      web chat) open a thread there, where the support team answers the customer.
    """

    bot_token: str
    app_token: str | None = None
    signing_secret: str | None = None
    api_url: str = SLACK_API_URL
    handover_mention: str = ""
    staff_users: frozenset[str] = frozenset()
    staff_group: str | None = None
    support_channel: str | None = None

    @property
    def socket_mode(self) -> bool:
        return self.app_token is not None

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.bot_token, self.app_token, self.signing_secret) if s)

    def __repr__(self) -> str:
        mode = "socket" if self.socket_mode else "http"
        return f"SlackSettings(mode={mode!r}, api_url={self.api_url!r}, secrets=<{len(self.secrets)} hidden>)"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SlackSettings:
        """Read the settings; a missing or malformed variable stops with a message naming it."""
        env = os.environ if environ is None else environ
        bot_token = _read(env, "SLACK_BOT_TOKEN", prefix="xox")
        app_token = env.get("SLACK_APP_TOKEN") or None
        if app_token is not None:
            app_token = _read(env, "SLACK_APP_TOKEN", prefix="xapp-")
            signing_secret = env.get("SLACK_SIGNING_SECRET") or None
        else:
            signing_secret = _read(
                env, "SLACK_SIGNING_SECRET", prefix="", mode="HTTP mode (no SLACK_APP_TOKEN)"
            )
        api_url = env.get("SLACK_API_URL") or SLACK_API_URL
        if not api_url.startswith(("https://", "http://")):
            raise ChannelError(
                f"SLACK_API_URL must be an http(s) URL, not {api_url!r}", hint=f"e.g. {SLACK_API_URL}"
            )
        mention = env.get("SLACK_HANDOVER_MENTION", "").strip()
        called = _CALLED_GROUP.fullmatch(mention)
        return cls(
            bot_token=bot_token,
            app_token=app_token,
            signing_secret=signing_secret,
            api_url=api_url if api_url.endswith("/") else api_url + "/",
            handover_mention=mention,
            staff_users=frozenset(_ids(env, "SLACK_STAFF_USERS", "UW", "U0123ABCD,U0456EFGH")),
            staff_group=next(iter(_ids(env, "SLACK_STAFF_GROUP", "S", "S0123ABCD")), None)
            or (called.group(1) if called else None),
            support_channel=next(iter(_ids(env, "SLACK_SUPPORT_CHANNEL", "CG", "C0123ABCD")), None),
        )


def _ids(env: Mapping[str, str], name: str, first: str, example: str) -> list[str]:
    """Slack ids from a comma-separated variable; one that is not an id stops start-up."""
    ids = [part.strip() for part in env.get(name, "").split(",") if part.strip()]
    for value in ids:
        if not _ID.fullmatch(value) or value[0] not in first:
            raise ChannelError(
                f"{name} holds {value!r}, which is not a Slack id starting with {' or '.join(first)}",
                hint=f"e.g. {name}={example} (a member's or channel's ⋮ menu > Copy ID)",
            )
    if len(ids) > 1 and name != "SLACK_STAFF_USERS":
        raise ChannelError(f"{name} holds {len(ids)} ids; it takes one", hint=f"e.g. {name}={example}")
    return ids


def _read(env: Mapping[str, str], name: str, *, prefix: str, mode: str = "") -> str:
    value = env.get(name, "").strip()
    needed = f" for {mode}" if mode else ""
    if not value:
        raise ChannelError(
            f"{name} is not set{needed}",
            hint=f"set it to {WHERE[name]} of your app at {APPS_PAGE}",
        )
    if not value.startswith(prefix):
        raise ChannelError(
            f"{name} does not look right: it should start with {prefix!r}",
            hint=f"copy {WHERE[name]} of your app at {APPS_PAGE}",
        )
    return value


class RedactingFilter(logging.Filter):
    """Replaces every secret in a log record's message (and traceback text) with ``[redacted]``."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= 6)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.scrub(record.getMessage()), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
