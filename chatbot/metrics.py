"""What the engine is doing, as Prometheus metrics (``prometheus_client``).

Every :class:`~chatbot.engine.Engine` owns one :class:`Metrics` with a registry of its own (two
engines in one process never share counters); the HTTP channels serve it at ``/metrics``
(``plugins/serving.py``). Names follow Prometheus' conventions: counters end in ``_total``,
durations are in seconds.

======================================  =====================================================
``chatbot_replies_total{finish_reason}``  replies written: stop, length, cancelled, error
``chatbot_reply_seconds``                 message received to reply stored (histogram)
``chatbot_first_token_seconds``           message received to first token (histogram)
``chatbot_reply_tokens_per_second``       a reply's tokens over its generation time (histogram)
``chatbot_reply_tokens_total``            tokens generated
``chatbot_handovers_total``               replies flagged for a person to take over
``chatbot_feedback_total{rating}``        thumbs up / down
``chatbot_errors_total{kind}``            refused messages and failures, by kind
``chatbot_active_conversations``          conversations with a reply being generated now
``chatbot_scheduler_queue_depth``         replies waiting for a slot in the decode batch
``chatbot_scheduler_batch_size``          replies in the decode batch
``chatbot_scheduler_kept_bytes``          memory holding conversations' keys and values between turns
``chatbot_scheduler_kept_tokens_total``   prompt tokens not prefilled: their turn's keys and values were kept
``chatbot_draft_tokens_total{outcome}``   speculative decoding's drafted tokens: accepted, rejected
``chatbot_draft_steps_total``             a reply's steps that verified its draft
======================================  =====================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Scheduler(Protocol):
    """What the metrics read of :class:`chatbot.scheduler.BatchingGenerator`."""

    reused_tokens: int
    drafted_tokens: int
    accepted_tokens: int
    verify_steps: int

    def queue_depth(self) -> int: ...
    def batch_size(self) -> int: ...
    def kept_bytes(self) -> int: ...


class Metrics:
    """The engine's metrics in a registry of their own; :meth:`render` is the ``/metrics`` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.replies = Counter(
            "chatbot_replies", "Replies written, by how they finished", ["finish_reason"], registry=registry
        )
        self.reply_seconds = Histogram(
            "chatbot_reply_seconds", "From a message to its stored reply", buckets=SECONDS, registry=registry
        )
        self.first_token_seconds = Histogram(
            "chatbot_first_token_seconds",
            "From a message to its reply's first token",
            buckets=SECONDS,
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            "chatbot_reply_tokens_per_second",
            "A reply's tokens over its generation time",
            buckets=RATES,
            registry=registry,
        )
        self.reply_tokens = Counter("chatbot_reply_tokens", "Tokens generated", registry=registry)
        self.handovers = Counter("chatbot_handovers", "Replies flagged for a person", registry=registry)
        self.feedback = Counter("chatbot_feedback", "Ratings of replies", ["rating"], registry=registry)
        self.errors = Counter(
            "chatbot_errors", "Refused messages and failures, by kind", ["kind"], registry=registry
        )
        self.active = Gauge(
            "chatbot_active_conversations", "Conversations with a reply being generated", registry=registry
        )
        self.queue_depth = Gauge(
            "chatbot_scheduler_queue_depth",
            "Replies waiting for a slot in the decode batch",
            registry=registry,
        )
        self.batch_size = Gauge(
            "chatbot_scheduler_batch_size", "Replies in the scheduler's decode batch", registry=registry
        )
        self.kept_bytes = Gauge(
            "chatbot_scheduler_kept_bytes",
            "Memory holding conversations' keys and values between their turns",
            registry=registry,
        )
        self._kept_help = "Prompt tokens not prefilled because their conversation's earlier turn was kept"

    def watch_scheduler(self, scheduler: Scheduler) -> None:
        """Read the scheduler's figures whenever ``/metrics`` is scraped."""
        self.queue_depth.set_function(lambda: float(scheduler.queue_depth()))
        self.batch_size.set_function(lambda: float(scheduler.batch_size()))
        self.kept_bytes.set_function(lambda: float(scheduler.kept_bytes()))
        name = "chatbot_scheduler_kept_tokens"
        self.registry.register(_CounterOf(name, self._kept_help, lambda: scheduler.reused_tokens))
        # whether drafting pays on this traffic: accepted against rejected (README "Speculative decoding")
        self.registry.register(_DraftCounters(scheduler))

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


class _CounterOf(Collector):
    """A counter whose value another object keeps (read at each scrape)."""

    def __init__(self, name: str, documentation: str, value: Callable[[], int]) -> None:
        self.name, self.documentation, self.value = name, documentation, value

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=float(self.value()))


class _DraftCounters(Collector):
    """Speculative decoding's counts, kept by the scheduler (read at each scrape)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[CounterMetricFamily]:
        drafted, accepted = self.scheduler.drafted_tokens, self.scheduler.accepted_tokens
        tokens = CounterMetricFamily(
            "chatbot_draft_tokens", "Drafted tokens, by whether greedy decoding kept them", labels=["outcome"]
        )
        tokens.add_metric(["accepted"], float(accepted))
        tokens.add_metric(["rejected"], float(drafted - accepted))
        yield tokens
        yield CounterMetricFamily(
            "chatbot_draft_steps",
            "Replies' decode steps that verified a draft (several a step when replies draft together)",
            value=float(self.scheduler.verify_steps),
        )
