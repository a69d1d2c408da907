"""Who is on the support team in Slack: listed user ids and the members of a user group.

The group's members are read with ``usergroups.users.list`` (scope ``usergroups:read``) and kept
for :data:`GROUP_TTL_S` seconds, so a thread's every message does not cost a Web API call and a
new team member counts within a minute. When Slack refuses the call, the last members known
stay (none at first) and the refusal is logged once per TTL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger("chatbot.slack")

GROUP_TTL_S = 60.0  # how long the user group's members are trusted before they are read again


def staff_name(user: str) -> str:
    """How the engine's handover names a Slack staff member: ``slack:U123``."""
    return f"slack:{user}"


class Staff:
    """``user in staff``: whether a Slack user is on the support team."""

    def __init__(
        self,
        client: WebClient,
        *,
        users: frozenset[str] = frozenset(),
        group: str | None = None,
        ttl_s: float = GROUP_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.users = users
        self.group = group
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._members: frozenset[str] = frozenset()
        self._read_at: float | None = None

    @property
    def configured(self) -> bool:
        """Whether any staff are named (listed users or a group)."""
        return bool(self.users) or self.group is not None

    def __contains__(self, user: object) -> bool:
        return isinstance(user, str) and (user in self.users or user in self._group_members())

    def _group_members(self) -> frozenset[str]:
        if self.group is None:
            return frozenset()
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self.ttl_s:
                self._read_at = now
                self._members = self._read_group(self.group, self._members)
            return self._members

    def _read_group(self, group: str, known: frozenset[str]) -> frozenset[str]:
        try:
            answer = self.client.usergroups_users_list(usergroup=group)
        except SlackApiError as error:
            code = error.response.get("error", "unknown error") if error.response else "unknown error"
            log.warning(
                "cannot read the members of user group %s (%s): add the scope usergroups:read, or set "
                "SLACK_STAFF_USERS",
                group,
                code,
            )
            return known
        except OSError as error:
            log.warning("cannot read the members of user group %s (%s)", group, type(error).__name__)
            return known
        return frozenset(str(user) for user in answer.get("users") or [])
