"""Limits that keep one visitor from starving the rest: message rates and concurrent replies.

* :class:`RateLimiter`: a token bucket per key (a conversation, a client): ``per_minute``
  messages a minute on average, bursts up to the same number. A message over the limit is refused
  with :class:`~chatbot.errors.RateLimited`, which says when to try again; nothing is stored.
* :class:`ReplySlots`: at most ``limit`` replies generated at once; the next ones wait in line
  up to ``timeout_s`` and are then refused with :class:`~chatbot.errors.Busy`.

Both are per process: with several replicas, each enforces its own share.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from chatbot.errors import Busy, RateLimited

_IDLE_S = 600.0  # a bucket untouched this long is full again: forget it


class RateLimiter:
    """Token buckets by key; :meth:`check` takes one token or raises :class:`RateLimited`."""

    def __init__(self, per_minute: float, *, what: str) -> None:
        if per_minute <= 0:
            raise ValueError(f"a rate limit is a positive number of messages a minute, not {per_minute}")
        self.per_minute = per_minute
        self.what = what  # "this conversation", "you": how the refusal names who is limited
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()
        self._pruned = time.monotonic()

    def check(self, key: str) -> None:
        now = time.monotonic()
        rate = self.per_minute / 60.0  # tokens a second
        with self._lock:
            tokens, when = self._buckets.get(key, (self.per_minute, now))
            tokens = min(self.per_minute, tokens + (now - when) * rate)
            if tokens < 1.0:
                wait = (1.0 - tokens) / rate
                self._buckets[key] = (tokens, now)
                raise RateLimited(
                    f"too many messages from {self.what}: the limit is {self.per_minute:g} a minute",
                    hint=f"wait {wait:.0f} s and send it again",
                    retry_after_s=wait,
                )
            self._buckets[key] = (tokens - 1.0, now)
            if now - self._pruned > _IDLE_S:
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < _IDLE_S}
                self._pruned = now


class ReplySlots:
    """At most ``limit`` replies at once; a reply waits for a slot up to ``timeout_s``."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        if limit < 1:
            raise ValueError(f"the number of replies at once must be at least 1, not {limit}")
        self.limit = limit
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self.timeout_s):
            raise Busy(
                f"all {self.limit} reply slots stayed busy for {self.timeout_s:g} s",
                hint="the assistant is busy: send your message again in a moment",
            )
        try:
            yield
        finally:
            self._slots.release()
