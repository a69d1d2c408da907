"""Who may use the staff console: the accounts in ``CHATBOT_STAFF``, and their signed sessions.

``CHATBOT_STAFF`` holds one ``name:password`` pair per staff member, separated by spaces or
commas (``ada:correct-horse grace:battery-staple``). A staff member signs in on the console's
page and gets a session cookie of their own (``chatbot_staff``), signed with a key derived from
the accounts: every replica started with the same accounts accepts it, and changing a password
signs everybody out. A script may send the same name and password as HTTP basic auth instead.

The customer's cookie (``chatbot_session``) means nothing here, and the staff cookie means
nothing to the chat. Passwords are compared in constant time and never printed, logged or put in
an error; ``repr`` shows the names only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from chatbot import ChannelError
from plugins.web.access import basic_credentials

STAFF_VARIABLE = "CHATBOT_STAFF"
STAFF_COOKIE = "chatbot_staff"
SESSION_S = 12 * 3600  # a working day: then sign in again
MIN_PASSWORD = 8
_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_DUMMY = "x" * 32  # compared against when the name is unknown, so timing says nothing of names


@dataclass(frozen=True, repr=False)
class StaffAccounts:
    """The staff members who may sign in, by name."""

    passwords: Mapping[str, str]

    def __repr__(self) -> str:
        return f"StaffAccounts(names={sorted(self.passwords)!r})"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> StaffAccounts | None:
        """The accounts in ``CHATBOT_STAFF``; ``None`` when it is unset (the console is off)."""
        value = (os.environ if environ is None else environ).get(STAFF_VARIABLE, "")
        if not value.strip():
            return None
        return cls.parse(value)

    @classmethod
    def parse(cls, value: str) -> StaffAccounts:
        """``name:password`` pairs separated by spaces or commas; a malformed one stops start-up
        with its position (never its text: it holds a password)."""
        passwords: dict[str, str] = {}
        for number, entry in enumerate(re.split(r"[\s,]+", value.strip()), start=1):
            name, colon, password = entry.partition(":")
            where = f"{STAFF_VARIABLE}: account {number}"
            if not colon or not _NAME.fullmatch(name):
                raise ChannelError(
                    f"{where} is not of the form name:password",
                    hint="a name is 1 to 64 letters, digits or . _ @ + -; separate accounts by spaces",
                )
            if len(password) < MIN_PASSWORD:
                raise ChannelError(
                    f"{where} ({name}) has a password shorter than {MIN_PASSWORD} characters",
                    hint="choose a longer one (e.g. `openssl rand -base64 18`)",
                )
            if name in passwords:
                raise ChannelError(f"{where}: {name} is listed twice", hint="keep one entry per name")
            passwords[name] = password
        return cls(passwords)

    @property
    def _key(self) -> bytes:
        entries = "\n".join(f"{name}:{password}" for name, password in sorted(self.passwords.items()))
        return hashlib.sha256(b"chatbot staff sessions\n" + entries.encode()).digest()

    def check(self, name: str, password: str) -> bool:
        """Whether ``name`` signs in with ``password`` (constant-time in the password)."""
        expected = self.passwords.get(name)
        same = hmac.compare_digest(password.encode(), (expected or _DUMMY).encode())
        return expected is not None and same

    def basic(self, authorization: str | None) -> str | None:
        """The staff member an ``Authorization: Basic`` header signs in, if any."""
        given = basic_credentials(authorization)
        return given[0] if given is not None and self.check(*given) else None

    def session(self, name: str, *, now: float | None = None) -> str:
        """A session cookie's value for ``name``, valid for :data:`SESSION_S`."""
        expires = int((time.time() if now is None else now) + SESSION_S)
        body = f"{name}.{expires}"
        return f"{body}.{self._sign(body)}"

    def signed_in(self, value: str | None, *, now: float | None = None) -> str | None:
        """The staff member a session cookie's value belongs to, if it is valid and not expired."""
        if not value or value.count(".") < 2:
            return None
        body, _, signature = value.rpartition(".")
        name, _, expires = body.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)) or name not in self.passwords:
            return None
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return None
        return name

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


@dataclass
class SignInLimit:
    """At most ``attempts`` failed sign-ins per address in ``window_s``: a guessed password is slow."""

    attempts: int = 5
    window_s: float = 60.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def allowed(self, address: str, *, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        failures = self._failures.get(address)
        while failures and failures[0] < now - self.window_s:
            failures.popleft()
        return not failures or len(failures) < self.attempts

    def failed(self, address: str, *, now: float | None = None) -> None:
        if len(self._failures) > 10_000:  # many addresses: forget the oldest rather than grow
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque()).append(time.monotonic() if now is None else now)
