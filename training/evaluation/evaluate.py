"""Measuring a model folder on held-out conversations, next to a retrieval baseline.

:func:`evaluate_model` measures the model that is served: the ONNX graph ``onnx/model.onnx`` run
by ONNX Runtime, exactly as ``chatbot serve`` runs it.

- **Perplexity on the agent's tokens.** Each test conversation is encoded the way training
  encodes it (:class:`training.dataset.examples.ConversationEncoder`: the folder's chat template, labels on
  the assistant replies and their ``<|end|>``), the graph scores every position in one pass, and
  the mean negative log-likelihood of the labelled tokens (each predicted from the tokens before
  it, as a causal LM's loss shifts its labels) is exponentiated. It is the validation loss of the
  PyTorch weights, computed on the graph that serves (a test holds the two to 1e-4).
- **Reply quality.** For every agent turn that answers a customer message, the model writes a
  reply from the *reference* history before it (the system prompt and the earlier turns as the
  agent really wrote them), greedily, through the engine's own path
  (:func:`chatbot.prompt.build_prompt`, :class:`chatbot.generation.OnnxGenerator`, the engine's
  incremental decoding, stopped at the end-of-turn token and stripped), so the text is what a
  customer would have read. It is compared with the agent's reply by ROUGE-L F1 (``rouge_score``,
  0 to 1, averaged over replies) and corpus BLEU (``sacrebleu``, 0 to 100, its standard ``13a``
  tokenizer after each Chinese or Japanese character is split off). Each reply is timed: prompt
  building, generation and decoding, after one untimed warm-up reply.
- **Handing over.** When customer turns of the test data are labelled out of scope
  (:class:`~training.transcripts.readers.Turn`), every customer turn gets the engine's two
  handover signals: the mean token log-probability of the model's greedy reply to it
  (``confidence``) and its similarity to the model's scope index (``similarity``,
  :mod:`chatbot.scope`). Each signal, and the two together (either fires), is scored against the
  labels at the engine's thresholds (precision and recall of "handed over" as "out of scope"),
  and over a sweep of thresholds (:class:`Handover`).
- **A retrieval baseline** in the same run, when training conversations are given: the training
  reply whose context is the TF-IDF nearest neighbour of the test context
  (:class:`RetrievalBaseline`), scored and timed on the same replies. A fine-tuned model that does
  not beat it has learnt little more than a lookup.

Everything runs locally: both metrics come from installed packages, nothing is fetched from a
hub. ROUGE's default tokenizer keeps only ASCII letters and digits (a Japanese or Russian reply
scores 0 against itself); here it gets :func:`words`, which keeps the words of every script and
counts each Chinese or Japanese character as a word.

Example::

    from training.evaluation.evaluate import evaluate_model
    from training.transcripts.prepare import load_conversations

    test = load_conversations(["held-out/"]).transcripts
    train = load_conversations(["transcripts/"]).transcripts
    result = evaluate_model("models/current", test, train=train, max_replies=200)
    print(result.to_markdown())
    result.to_dict()  # JSON-able figures; to_dict(replies=True) adds every reply

transformers, rouge-score and sacrebleu (the ``train`` extra) are imported inside the functions
that use them; :func:`require_packages` imports them all up front.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatbot.engine import EngineConfig
from chatbot.errors import ChatbotError, MessageTooLong
from chatbot.folder import ModelFolder
from chatbot.generation import OnnxGenerator
from chatbot.prompt import build_prompt
from chatbot.scope import CJK_RANGES, ScopeIndex, words
from chatbot.textstream import IncrementalDecoder
from chatbot.types import GenerationConfig, Message, Progress
from chatbot.versions import model_folder
from training.dataset.examples import IGNORE, ConversationEncoder, Example, Skipped, messages_of, split_ids
from training.export.parity import onnx_logits
from training.transcripts.readers import Transcript, Turn

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from transformers import PreTrainedTokenizerBase


MODEL = "model"
RETRIEVAL = "retrieval"
NO_BASELINE = "No retrieval baseline:"  # how the note on a missing baseline starts
AGENT_WEIGHT = 0.5  # weight of the agent's previous turn in the baseline's context (customer = 1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # created_at of the reference turns given to build_prompt

# words of any script (chatbot.scope.WORD); each Chinese or Japanese character split off for BLEU
CJK_CHARACTER = re.compile(rf"([{CJK_RANGES}])")

METRICS_NOTE = (
    "ROUGE-L F1 (0-1) is averaged over replies, on lower-cased words of any script (each Chinese or "
    "Japanese character a word); BLEU (0-100) is sacrebleu's corpus BLEU with its 13a tokenizer "
    "(each Chinese or Japanese character split off first). Latency covers prompt building, "
    "generation and decoding of one reply; tokens per reply count the end-of-turn token."
)


class EvaluationError(ChatbotError, ValueError):
    """An evaluation that cannot run: no test conversations, an option out of range."""


def require_packages() -> None:
    """Import what evaluation needs beyond serving; an ImportError names the missing package."""
    import rouge_score.rouge_scorer  # noqa: F401
    import sacrebleu  # noqa: F401
    import transformers  # noqa: F401


def _silent(message: str) -> None:
    """The default progress callback: say nothing."""


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Perplexity:
    """The model's perplexity on the agent's tokens of the test conversations."""

    value: float | None  # exp(mean_nll); None when no token was learnt
    mean_nll: float | None  # mean negative log-likelihood, nats per learnt token
    learnt_tokens: int  # labelled tokens scored (replies and their end-of-turn tokens)
    conversations: int
    examples: int  # windows: a conversation longer than the context window gives several
    skipped: tuple[str, ...] = ()  # agent turns not scored, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": _finite(self.value),
            "mean_nll": _finite(self.mean_nll),
            "learnt_tokens": self.learnt_tokens,
            "conversations": self.conversations,
            "examples": self.examples,
            "skipped": list(self.skipped),
        }


@dataclass(frozen=True)
class Scores:
    """One row of the table: how close a system's replies are to the agent's, and how fast."""

    system: str  # "model" or "retrieval"
    description: str
    replies: int
    rouge_l: float | None  # mean ROUGE-L F1, 0..1
    bleu: float | None  # corpus BLEU, 0..100
    latency_ms_mean: float | None
    latency_ms_p95: float | None
    tokens_per_reply: float | None = None  # generated tokens (end-of-turn included); model only

    def to_dict(self) -> dict[str, Any]:
        return {
            key: _finite(value) if isinstance(value, float) else value for key, value in vars(self).items()
        }


@dataclass(frozen=True)
class ReplyRecord:
    """One evaluated agent turn: the reference and what each system answered."""

    conversation_id: str
    turn: int  # 1-based position of the agent turn in its transcript
    reference: str
    model: str
    model_latency_ms: float
    model_tokens: int
    retrieval: str | None = None
    retrieval_latency_ms: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """The result of :func:`evaluate_model`: perplexity, a row per system, notes, every reply."""

    model: str
    model_dir: str
    device: str
    settings: dict[str, Any]
    conversations: int
    replies_available: int  # agent turns answering a customer message, before max_replies
    perplexity: Perplexity
    scores: tuple[Scores, ...]  # the model first, then the retrieval baseline when there is one
    notes: tuple[str, ...] = ()  # what a reader must know: why there is no baseline, skipped turns
    replies: tuple[ReplyRecord, ...] = field(default=(), repr=False)
    handover: Handover | None = None  # None when no test customer turn is labelled out of scope

    def row(self, system: str) -> Scores | None:
        """The row of ``system`` ("model" or "retrieval"), or ``None``."""
        return next((row for row in self.scores if row.system == system), None)

    def to_dict(self, *, replies: bool = False) -> dict[str, Any]:
        """The figures as JSON-able values (no NaN or infinity); ``replies`` adds every reply.

        Keys: ``model`` (``name``, ``path``, ``device``); ``settings`` (``max_new_tokens``,
        ``max_replies``, ``system_prompt``); ``data`` (``conversations``, ``replies_available``);
        ``perplexity`` (see :class:`Perplexity`); ``scores``: ``model`` and, with a baseline,
        ``retrieval``, each a :class:`Scores` (``system``, ``description``, ``replies``,
        ``rouge_l``, ``bleu``, ``latency_ms_mean``, ``latency_ms_p95``, ``tokens_per_reply``);
        ``notes``; ``metrics`` (how the scores are computed); ``handover`` (``None`` without
        labelled out-of-scope turns, else :meth:`Handover.to_dict`: ``messages``, ``labelled``,
        ``thresholds``, ``decisions`` and ``sweep``, each decision a ``signal``, ``threshold``,
        ``handed_over``, ``true_positives``, ``precision``, ``recall``); with ``replies``,
        ``replies``: one :class:`ReplyRecord` each (``conversation_id``, ``turn``, ``reference``,
        ``model``, ``model_latency_ms``, ``model_tokens``, ``retrieval``, ``retrieval_latency_ms``)
        and, with handover figures, ``handover.messages_scored``: one :class:`HandoverRecord` each.
        """
        data: dict[str, Any] = {
            "model": {"name": self.model, "path": self.model_dir, "device": self.device},
            "settings": dict(self.settings),
            "data": {"conversations": self.conversations, "replies_available": self.replies_available},
            "perplexity": self.perplexity.to_dict(),
            "scores": {row.system: row.to_dict() for row in self.scores},
            "notes": list(self.notes),
            "metrics": METRICS_NOTE,
            "handover": self.handover.to_dict(records=replies) if self.handover else None,
        }
        if replies:
            data["replies"] = [vars(record) for record in self.replies]
        return data

    def to_markdown(self) -> str:
        """A heading, the perplexity line, the table (a row per system) and the notes."""
        handover = ["", *self.handover.to_markdown()] if self.handover else []
        return "\n".join(
            [*_markdown_head(self), "", *_markdown_table(self.scores), *handover, "", *_markdown_notes(self)]
        )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _markdown_head(result: Evaluation) -> list[str]:
    ppl = result.perplexity
    settings = result.settings
    cap = f", at most {settings['max_replies']} evaluated" if settings["max_replies"] else ""
    lines = [
        f"## Evaluation of {result.model}",
        "",
        f"{result.conversations} test conversations, {result.replies_available} agent replies to "
        f"customers{cap}; greedy replies of at most {settings['max_new_tokens']} new tokens on "
        f"{result.device}.",
        "",
    ]
    if ppl.value is None:
        return [*lines, "Perplexity: not measured (no agent token could be scored)."]
    return [
        *lines,
        f"Perplexity on the agent's tokens: **{ppl.value:.2f}** (mean negative log-likelihood "
        f"{ppl.mean_nll:.4f} nats over {ppl.learnt_tokens} learnt tokens).",
    ]


def _markdown_table(rows: Sequence[Scores]) -> list[str]:
    lines = [
        "| system | ROUGE-L F1 | BLEU | replies | mean latency (ms) | p95 latency (ms) | tokens / reply |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [
            f"{row.system}: {row.description}",
            _number(row.rouge_l, 3),
            _number(row.bleu, 2),
            str(row.replies),
            _milliseconds(row.latency_ms_mean),
            _milliseconds(row.latency_ms_p95),
            _number(row.tokens_per_reply, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _markdown_notes(result: Evaluation) -> list[str]:
    return [*(f"- {note}" for note in result.notes), f"- {METRICS_NOTE}"]


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _milliseconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


# --- the entry points -----------------------------------------------------------------------


def evaluate_model(
    model_dir: str | os.PathLike[str],
    test: Sequence[Transcript],
    *,
    train: Sequence[Transcript] | None = None,
    max_replies: int | None = None,
    max_new_tokens: int = 64,
    system_prompt: str | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    handover_below: float | None = EngineConfig.handover_below,
    handover_unlike_below: float | None = EngineConfig.handover_unlike_below,
) -> Evaluation:
    """Measure the model folder at ``model_dir`` on the ``test`` conversations.

    - ``train``: the training conversations, indexed by the retrieval baseline; without them
      (``None`` or empty) the table has no baseline row and a note says why.
    - ``max_replies``: evaluate at most this many agent replies, spread evenly over all of them
      (every ``len/max_replies``-th, in order; see :func:`spread`); ``None`` evaluates them all.
      Perplexity is always measured on every conversation (one forward pass each).
    - ``max_new_tokens``: the reply budget of the model (greedy decoding).
    - ``system_prompt``: for conversations without a system turn of their own, as in training.
    - ``device``: "auto", "cpu" or "cuda" (default ``$CHATBOT_DEVICE`` or auto).
    - ``progress``: called with a line of text at each stage.
    - ``handover_below``, ``handover_unlike_below``: the engine's handover thresholds
      (:class:`chatbot.engine.EngineConfig`) the handover figures are given at, when customer turns
      of ``test`` are labelled out of scope (``max_replies`` then caps the unlabelled turns scored;
      every labelled one is scored).

    Raises :class:`~chatbot.errors.ModelFolderError` for a missing or broken folder and
    :class:`EvaluationError` without test conversations or for an option out of range.
    """
    _check_options(test, max_replies=max_replies, max_new_tokens=max_new_tokens)
    say = progress or _silent
    folder = model_folder(model_dir)
    generator = OnnxGenerator(folder, device=device)
    say(f"perplexity of {folder.name} on {len(test)} conversations ({generator.device})")
    ppl = _served_perplexity(folder, generator, test, system_prompt)
    cases, notes = _usable_cases(folder, reply_cases(test, system_prompt=system_prompt))
    chosen = spread(cases, max_replies)
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    say(f"generating {len(chosen)} of {len(cases)} replies (at most {max_new_tokens} new tokens each)")
    answered, too_long = _model_replies(folder, generator, chosen, config, say)
    baseline, baseline_notes = _baseline(train, test, say)
    records = _with_baseline(answered, baseline)
    thresholds = Thresholds(handover_below, handover_unlike_below)
    handover = evaluate_handover(folder, generator, test, config, thresholds, system_prompt, max_replies, say)
    settings = {"max_new_tokens": max_new_tokens, "max_replies": max_replies, "system_prompt": system_prompt}
    return Evaluation(
        model=folder.name,
        model_dir=str(folder.path),
        device=generator.device,
        settings=settings,
        conversations=len(test),
        replies_available=len(cases),
        perplexity=ppl,
        scores=_rows(records, baseline),
        notes=(*baseline_notes, *notes, *_skip_notes(too_long, max_new_tokens)),
        replies=tuple(records),
        handover=handover,
    )


def _served_perplexity(
    folder: ModelFolder, generator: OnnxGenerator, test: Sequence[Transcript], system_prompt: str | None
) -> Perplexity:
    """:func:`measure_perplexity` on the session that generates the replies (one graph load)."""
    tokenizer = _load_tokenizer(folder.path)
    return measure_perplexity(
        generator.session, tokenizer, test, max_length=folder.spec.n_positions, system_prompt=system_prompt
    )


def _check_options(test: Sequence[Transcript], *, max_replies: int | None, max_new_tokens: int) -> None:
    if not test:
        raise EvaluationError(
            "there are no test conversations to evaluate on",
            hint="check the data paths; the read summary lists every rejected conversation",
        )
    if max_replies is not None and max_replies < 1:
        raise EvaluationError(f"max_replies must be at least 1, not {max_replies}", hint="or leave it out")
    if max_new_tokens < 1:
        raise EvaluationError(f"max_new_tokens must be at least 1, not {max_new_tokens}")


def evaluate_files(
    model_dir: str | os.PathLike[str],
    data: Sequence[str | os.PathLike[str]],
    *,
    train_data: Sequence[str | os.PathLike[str]] | None = None,
    max_replies: int | None = None,
    max_new_tokens: int = 64,
    system_prompt: str | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    handover_below: float | None = EngineConfig.handover_below,
    handover_unlike_below: float | None = EngineConfig.handover_unlike_below,
) -> Evaluation:
    """:func:`evaluate_model` on transcript files, read and redacted as training reads them.

    ``data`` and ``train_data`` are files, folders or glob patterns
    (:func:`training.transcripts.prepare.load_conversations`). Without ``train_data`` the baseline indexes
    the training data the model's card records (``card["data"]["files"]``, paths as recorded;
    only the training split when the card records ``validation_share`` and ``seed``, as
    ``chatbot train`` does) when every one of those files still exists; otherwise it runs
    without the baseline and says so. The model folder is checked first, then the packages
    (:func:`require_packages` raises ImportError), then the data is read.
    """
    from training.transcripts.prepare import load_conversations

    say = progress or _silent
    folder = model_folder(model_dir)  # a missing or broken folder fails first, with its hint
    require_packages()
    test = load_conversations(data)
    say(f"test data: {test.summary()}")
    train, note = _training_data(folder, train_data, say)
    result = evaluate_model(
        folder.path,
        test.transcripts,
        train=train,
        max_replies=max_replies,
        max_new_tokens=max_new_tokens,
        system_prompt=system_prompt if system_prompt is not None else folder.system_prompt,
        device=device,
        progress=say,
        handover_below=handover_below,
        handover_unlike_below=handover_unlike_below,
    )
    if note is None:
        return result
    return replace(result, notes=(note, *(n for n in result.notes if not n.startswith(NO_BASELINE))))


def _training_data(
    folder: ModelFolder, train_data: Sequence[str | os.PathLike[str]] | None, say: Progress
) -> tuple[list[Transcript] | None, str | None]:
    """The baseline's training conversations, or ``None`` and the reason there are none."""
    from training.transcripts.prepare import load_conversations

    if train_data:
        given = load_conversations(train_data)
        say(f"training data: {given.summary()}")
        return given.transcripts, None
    files = recorded_training_files(folder.card)
    if not files:
        return None, f"{NO_BASELINE} no training data was given (pass --train-data PATH)."
    missing = [path for path in files if not Path(path).exists()]
    if missing:
        say(f"warning: the training data recorded in {folder.path / 'card.json'} is missing: {missing}")
        more = ", ..." if len(missing) > 3 else ""
        return None, (
            f"{NO_BASELINE} the training data recorded in card.json is missing "
            f"({', '.join(missing[:3])}{more}); pass --train-data PATH."
        )
    recorded = load_conversations(files)
    train = _training_split(recorded.transcripts, folder.card)
    say(f"baseline index: {len(train)} training conversations from the {len(files)} files in card.json")
    return train, None


def _training_split(transcripts: list[Transcript], card: dict[str, Any]) -> list[Transcript]:
    """The conversations training learnt from: the card's data files hold the validation split
    too, and its ``validation_share`` and ``seed`` say how ``chatbot train`` cut it."""
    data = card.get("data", {})
    share, seed = data.get("validation_share"), data.get("seed")
    if not isinstance(share, (int, float)) or not isinstance(seed, int):
        return transcripts
    train_ids, _ = split_ids([t.id for t in transcripts], validation=float(share), seed=seed)
    return [t for t in transcripts if t.id in train_ids]


def recorded_training_files(card: dict[str, Any]) -> list[str]:
    """The training files a model card records (``card["data"]["files"]``); empty when none."""
    data = card.get("data")
    files = data.get("files") if isinstance(data, dict) else None
    return [str(path) for path in files] if isinstance(files, list) else []


def write_reports(
    result: Evaluation,
    *,
    json_path: str | os.PathLike[str] | None = None,
    markdown_path: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Write the JSON (with every reply) and the markdown report; return the paths written."""
    written = []
    if json_path is not None:
        text = json.dumps(result.to_dict(replies=True), indent=2, ensure_ascii=False, allow_nan=False)
        written.append(_write(Path(json_path), text + "\n"))
    if markdown_path is not None:
        written.append(_write(Path(markdown_path), result.to_markdown() + "\n"))
    return written


def _write(path: Path, text: str) -> Path:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise EvaluationError(f"cannot write {path}: {error.strerror}", hint="check the path") from error
    return path


# --- perplexity -----------------------------------------------------------------------------


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # The encoder tokenizes whole conversations and cuts them into windows itself: without this,
    # transformers logs that a conversation is "longer than the maximum" and will "cause errors".
    tokenizer.model_max_length = sys.maxsize
    return tokenizer


def measure_perplexity(
    session: InferenceSession | Callable[[list[int]], np.ndarray],
    tokenizer: PreTrainedTokenizerBase,
    transcripts: Sequence[Transcript],
    *,
    max_length: int,
    system_prompt: str | None = None,
) -> Perplexity:
    """Perplexity of the ONNX graph in ``session`` on the agent tokens of ``transcripts``.

    The conversations are encoded by :class:`~training.dataset.examples.ConversationEncoder` with
    ``max_length`` (the model's window); each window is scored in one forward pass. ``session``
    may also be a function from token ids to their logits (length, vocab), e.g. a fused variant
    stepped through its cache (:func:`variant_perplexity`).
    """
    encoder = ConversationEncoder(tokenizer, max_length=max_length)
    total, count, examples, skipped = 0.0, 0, 0, []
    for transcript in transcripts:
        for item in encoder.encode(transcript.id, messages_of(transcript, system_prompt)):
            if isinstance(item, Skipped):
                skipped.append(str(item))
                continue
            nll, learnt = example_nll(session, item)
            total, count, examples = total + nll, count + learnt, examples + 1
    mean = total / count if count else None
    value = math.exp(min(mean, 700.0)) if mean is not None else None  # 700: exp stays finite
    return Perplexity(value, mean, count, len(transcripts), examples, tuple(skipped))


def example_nll(
    session: InferenceSession | Callable[[list[int]], np.ndarray], example: Example
) -> tuple[float, int]:
    """The summed negative log-likelihood of the labelled tokens of ``example``, and their number.

    Position t predicts token t + 1, so the labels are shifted by one, as a causal LM's loss does.
    """
    targets = np.asarray(example.labels[1:], dtype=np.int64)  # (T-1,) the token each position predicts
    learnt = targets != IGNORE
    if not learnt.any():
        return 0.0, 0
    ids = example.input_ids
    scored = session(list(ids)) if callable(session) else onnx_logits(session, ids, len(ids))
    logits = scored[:-1][learnt].astype(np.float64)  # (N, vocab)
    peak = logits.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))  # (N,)
    chosen = logits[np.arange(len(logits)), targets[learnt]]
    return float(np.sum(log_norm - chosen)), int(learnt.sum())


def reference_perplexity(
    folder: ModelFolder, transcripts: Sequence[Transcript], *, system_prompt: str | None = None
) -> Perplexity:
    """:func:`measure_perplexity` of the reference export (``onnx/model.onnx``) on the CPU."""
    return _served_perplexity(folder, OnnxGenerator(folder, device="cpu"), transcripts, system_prompt)


def variant_perplexity(
    folder: ModelFolder,
    variant: str,
    transcripts: Sequence[Transcript],
    *,
    system_prompt: str | None = None,
    device: str = "cpu",
) -> Perplexity:
    """:func:`measure_perplexity` of a fast variant (``onnx/<variant>/``), one token per step
    through its KV cache: the fused graph scores the last position only, as it does when serving."""
    from chatbot.fused import FusedSession
    from chatbot.generation import choose_providers
    from chatbot.loader import variant_initializers
    from training.export.fused_graph import fused_logits

    initializers = variant_initializers(folder, variant)
    session = FusedSession(
        folder.variant_path(variant),
        folder.spec,
        providers=choose_providers(device),
        initializers=initializers,
    )

    def score(ids: list[int]) -> np.ndarray:
        return np.stack(list(fused_logits(session, ids, 1)))

    tokenizer = _load_tokenizer(folder.path)
    return measure_perplexity(
        score, tokenizer, transcripts, max_length=folder.spec.n_positions, system_prompt=system_prompt
    )


# --- the replies to predict -----------------------------------------------------------------


@dataclass(frozen=True)
class ReplyCase:
    """An agent turn to predict: the reference history before it and the reply itself."""

    conversation_id: str
    turn: int  # 1-based position of the agent turn in its transcript
    system_prompt: str | None  # the transcript's own system turn, else the default one
    history: tuple[Turn, ...]  # the turns before the reply (no leading system turn), last one the customer's
    reference: str


def reply_cases(transcripts: Sequence[Transcript], *, system_prompt: str | None = None) -> list[ReplyCase]:
    """Every agent turn that answers a customer message (the engine answers nothing else)."""
    return [case for transcript in transcripts for case in _cases_of(transcript, system_prompt)]


def _cases_of(transcript: Transcript, system_prompt: str | None) -> Iterator[ReplyCase]:
    turns = transcript.turns
    own = turns[0].content if turns and turns[0].role == "system" else None
    first = 0 if own is None else 1
    for index in range(first + 1, len(turns)):
        if turns[index].role == "assistant" and turns[index - 1].role == "user":
            history = turns[first:index]
            prompt = own if own is not None else system_prompt
            yield ReplyCase(transcript.id, index + 1, prompt, history, turns[index].content)


def spread(items: Sequence[Any], limit: int | None) -> list[Any]:
    """At most ``limit`` of ``items``, evenly spread and in order (all of them for ``None``)."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[index * len(items) // limit] for index in range(limit)]


def _usable_cases(folder: ModelFolder, cases: list[ReplyCase]) -> tuple[list[ReplyCase], list[str]]:
    """The cases without the model's reserved markers (the engine refuses those), and a note."""
    markers = folder.reserved_markers
    usable = [case for case in cases if not _has_marker(case, markers)]
    left_out = len(cases) - len(usable)
    note = f"{left_out} agent replies left out: their turns contain the model's reserved markers."
    return usable, [note] if left_out else []


def _has_marker(case: ReplyCase, markers: Sequence[str]) -> bool:
    texts = [case.system_prompt or "", case.reference, *(turn.content for turn in case.history)]
    return any(marker in text for marker in markers for text in texts)


def _skip_notes(too_long: Sequence[ReplyCase], max_new_tokens: int) -> list[str]:
    if not too_long:
        return []
    return [
        f"{len(too_long)} agent replies left out: the customer message does not fit the model's "
        f"window with a {max_new_tokens}-token reply budget (the engine would refuse it)."
    ]


# --- the model's replies --------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    text: str
    seconds: float
    tokens: int = 0
    confidence: float = float("-inf")  # mean token log-probability, end-of-turn included (as the engine)


def _model_replies(
    folder: ModelFolder,
    generator: OnnxGenerator,
    cases: Sequence[ReplyCase],
    config: GenerationConfig,
    say: Progress,
) -> tuple[list[tuple[ReplyCase, ReplyRecord]], list[ReplyCase]]:
    """The model's timed reply to every case; and the cases whose prompt does not fit."""
    answered: list[tuple[ReplyCase, ReplyRecord]] = []
    too_long: list[ReplyCase] = []
    if cases:
        _warm_up(folder, generator, cases, config)
    step = max(1, len(cases) // 10)
    for number, case in enumerate(cases, 1):
        try:
            answer = model_reply(folder, generator, case, config)
        except MessageTooLong:
            too_long.append(case)
            continue
        answered.append((case, _record(case, answer)))
        if number % step == 0 or number == len(cases):
            say(f"  {number}/{len(cases)} replies")
    return answered, too_long


def _warm_up(
    folder: ModelFolder, generator: OnnxGenerator, cases: Sequence[ReplyCase], config: GenerationConfig
) -> None:
    """One untimed reply, so the first timed one does not pay for ONNX Runtime's first run."""
    for case in cases:
        try:
            model_reply(
                folder, generator, case, replace(config, max_new_tokens=min(config.max_new_tokens, 8))
            )
            return
        except MessageTooLong:
            continue


def model_reply(
    folder: ModelFolder, generator: OnnxGenerator, case: ReplyCase, config: GenerationConfig
) -> _Answer:
    """The reply the engine would give to ``case``'s history, with its latency and token count.

    As :class:`chatbot.engine.Engine` does: the prompt from :func:`~chatbot.prompt.build_prompt`,
    generation up to a stop token, incremental decoding (never half a character), stripped.
    """
    started = time.perf_counter()
    history = [_message(case, seq, turn) for seq, turn in enumerate(case.history)]
    prompt = build_prompt(
        folder, history, system_prompt=case.system_prompt, max_new_tokens=config.max_new_tokens
    )
    decoder = IncrementalDecoder(folder.tokenizer)
    pieces, count, logprob = [], 0, 0.0
    for token in generator.generate(prompt.token_ids, config):
        count += 1
        logprob += token.logprob
        if token.id in generator.stop_token_ids:
            break
        pieces.append(decoder.push(token.id))
    text = ("".join(pieces) + decoder.flush()).strip()
    confidence = logprob / count if count else float("-inf")
    return _Answer(text, time.perf_counter() - started, count, confidence)


def _message(case: ReplyCase, seq: int, turn: Turn) -> Message:
    return Message(-1, case.conversation_id, seq, turn.role, turn.content, EPOCH)


def _record(case: ReplyCase, answer: _Answer) -> ReplyRecord:
    return ReplyRecord(
        conversation_id=case.conversation_id,
        turn=case.turn,
        reference=case.reference,
        model=answer.text,
        model_latency_ms=answer.seconds * 1000,
        model_tokens=answer.tokens,
    )


# --- handing over ---------------------------------------------------------------------------

CONFIDENCE = "confidence"  # the mean token log-probability of the reply
SIMILARITY = "similarity"  # the message's similarity to the scope index
EITHER = "either"  # a person takes over when either signal fires, as in the engine
SIGNALS = {
    CONFIDENCE: "confidence: mean token log-prob of the reply",
    SIMILARITY: "similarity to the training customer turns",
    EITHER: "either (what the engine does)",
}
CONFIDENCE_SWEEP = (-0.25, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -4.0)
SIMILARITY_SWEEP = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6)


@dataclass(frozen=True)
class Thresholds:
    """The engine's handover thresholds (``None`` turns a signal off)."""

    confidence: float | None  # EngineConfig.handover_below
    similarity: float | None  # EngineConfig.handover_unlike_below


@dataclass(frozen=True)
class HandoverRecord:
    """One customer turn scored: its label and the two signals the engine would see."""

    conversation_id: str
    turn: int  # 1-based position of the customer turn in its transcript
    message: str
    out_of_scope: bool  # the label
    confidence: float  # mean token log-prob of the model's greedy reply (-inf for an empty one)
    empty: bool  # the reply was empty (the engine hands those over too)
    similarity: float | None  # None: the model folder has no scope index

    def handed_over(self, thresholds: Thresholds) -> dict[str, bool]:
        """Whether each signal (and either) hands this turn over at ``thresholds``."""
        low = thresholds.confidence
        unsure = self.empty or (low is not None and self.confidence < low)
        unlike = (
            self.similarity is not None
            and thresholds.similarity is not None
            and self.similarity < thresholds.similarity
        )
        return {CONFIDENCE: unsure, SIMILARITY: unlike, EITHER: unsure or unlike}


@dataclass(frozen=True)
class Decision:
    """How one signal at one threshold does: of the turns it hands over, how many are labelled out
    of scope (precision), and how many of the labelled ones it hands over (recall)."""

    signal: str  # confidence, similarity or either
    threshold: str  # as written in the table, e.g. "< -2.5", "< 0.3", "off"
    handed_over: int
    true_positives: int
    precision: float | None  # None when nothing is handed over
    recall: float | None  # None without labelled turns

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class Handover:
    """The handover figures of an evaluation: at the engine's thresholds and over a sweep."""

    messages: int  # customer turns scored
    labelled: int  # of which labelled out of scope
    thresholds: Thresholds
    decisions: tuple[Decision, ...]  # each signal at the engine's thresholds
    sweep: tuple[Decision, ...]  # each signal over a range of thresholds
    notes: tuple[str, ...] = ()
    records: tuple[HandoverRecord, ...] = field(default=(), repr=False)

    def to_dict(self, *, records: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "messages": self.messages,
            "labelled": self.labelled,
            "thresholds": {"handover_below": self.thresholds.confidence},
            "decisions": [decision.to_dict() for decision in self.decisions],
            "sweep": [decision.to_dict() for decision in self.sweep],
            "notes": list(self.notes),
        }
        data["thresholds"]["handover_unlike_below"] = self.thresholds.similarity
        if records:
            data["messages_scored"] = [{**vars(r), "confidence": _finite(r.confidence)} for r in self.records]
        return data

    def to_markdown(self) -> list[str]:
        head = [
            "### Handing over",
            "",
            f"{self.messages} customer messages, {self.labelled} labelled out of scope. Precision: "
            "of the messages handed to a person, the share labelled out of scope; recall: of the "
            "labelled messages, the share handed over.",
            "",
        ]
        sweep = ["", "Threshold sweep (pick the thresholds here; see README, Evaluating):", ""]
        notes = [f"- {note}" for note in self.notes]
        return [
            *head,
            *_decision_table(self.decisions),
            *sweep,
            *_decision_table(self.sweep),
            *(["", *notes] if notes else []),
        ]


def _decision_table(decisions: Sequence[Decision]) -> list[str]:
    lines = ["| signal | hand over when | handed over | precision | recall |", "|---|---|---:|---:|---:|"]
    for d in decisions:
        cells = [SIGNALS[d.signal], d.threshold, str(d.handed_over), _number(d.precision, 3)]
        lines.append("| " + " | ".join([*cells, _number(d.recall, 3)]) + " |")
    return lines


def handover_cases(
    transcripts: Sequence[Transcript], *, system_prompt: str | None = None
) -> list[tuple[ReplyCase, bool]]:
    """Every customer turn with the history up to it (a case with no reference reply), and its
    out-of-scope label."""
    cases = []
    for transcript in transcripts:
        turns = transcript.turns
        own = turns[0].content if turns and turns[0].role == "system" else None
        first = 0 if own is None else 1
        prompt = own if own is not None else system_prompt
        for index in range(first, len(turns)):
            if turns[index].role == "user":
                case = ReplyCase(transcript.id, index + 1, prompt, turns[first : index + 1], "")
                cases.append((case, turns[index].out_of_scope))
    return cases


def evaluate_handover(
    folder: ModelFolder,
    generator: OnnxGenerator,
    test: Sequence[Transcript],
    config: GenerationConfig,
    thresholds: Thresholds,
    system_prompt: str | None = None,
    max_messages: int | None = None,
    say: Progress = _silent,
) -> Handover | None:
    """The handover figures on ``test``; ``None`` when none of its customer turns is labelled.

    Every labelled turn is scored, and at most ``max_messages`` unlabelled ones (spread evenly).
    """
    cases = handover_cases(test, system_prompt=system_prompt)
    labelled = [number for number, (_, label) in enumerate(cases) if label]
    if not labelled:
        return None
    others = spread([number for number, (_, label) in enumerate(cases) if not label], max_messages)
    chosen = [cases[number] for number in sorted({*labelled, *others})]
    scope = folder.scope
    say(f"scoring the handover decision on {len(chosen)} customer messages ({len(labelled)} labelled)")
    records, too_long = [], 0
    for case, label in chosen:
        try:
            answer = model_reply(folder, generator, case, config)
        except MessageTooLong:
            too_long += 1
            continue
        records.append(_handover_record(case, label, answer, scope))
    return handover_figures(records, thresholds, _handover_notes(scope, too_long))


def _handover_record(
    case: ReplyCase, label: bool, answer: _Answer, scope: ScopeIndex | None
) -> HandoverRecord:
    message = case.history[-1].content
    return HandoverRecord(
        conversation_id=case.conversation_id,
        turn=case.turn,
        message=message,
        out_of_scope=label,
        confidence=answer.confidence,
        empty=not answer.text,
        similarity=scope.similarity(message) if scope is not None else None,
    )


def _handover_notes(scope: ScopeIndex | None, too_long: int) -> tuple[str, ...]:
    notes = []
    if scope is None:
        notes.append(
            "The model folder has no scope index (scope.npz), so the similarity signal is off: "
            "train the model again with `chatbot train` to have one."
        )
    if too_long:
        notes.append(f"{too_long} customer messages left out: they do not fit the model's window.")
    return tuple(notes)


def handover_figures(
    records: Sequence[HandoverRecord], thresholds: Thresholds, notes: tuple[str, ...] = ()
) -> Handover:
    """The decisions at ``thresholds`` and the sweep (each signal alone; either, with the other
    signal at its engine threshold)."""
    at = [_decision(records, thresholds, signal) for signal in SIGNALS]
    sweep = [_decision(records, Thresholds(t, None), CONFIDENCE) for t in CONFIDENCE_SWEEP]
    if any(record.similarity is not None for record in records):
        sweep += [_decision(records, Thresholds(None, t), SIMILARITY) for t in SIMILARITY_SWEEP]
        sweep += [_decision(records, Thresholds(thresholds.confidence, t), EITHER) for t in SIMILARITY_SWEEP]
    labelled = sum(record.out_of_scope for record in records)
    return Handover(len(records), labelled, thresholds, tuple(at), tuple(sweep), notes, tuple(records))


def _decision(records: Sequence[HandoverRecord], thresholds: Thresholds, signal: str) -> Decision:
    flagged = [record for record in records if record.handed_over(thresholds)[signal]]
    hits = sum(record.out_of_scope for record in flagged)
    labelled = sum(record.out_of_scope for record in records)
    return Decision(
        signal=signal,
        threshold=_threshold_text(thresholds, signal),
        handed_over=len(flagged),
        true_positives=hits,
        precision=hits / len(flagged) if flagged else None,
        recall=hits / labelled if labelled else None,
    )


def _threshold_text(thresholds: Thresholds, signal: str) -> str:
    unsure = "off" if thresholds.confidence is None else f"confidence < {thresholds.confidence:g}"
    unlike = "off" if thresholds.similarity is None else f"similarity < {thresholds.similarity:g}"
    if signal == CONFIDENCE:
        return unsure + (" or an empty reply" if thresholds.confidence is not None else "")
    if signal == SIMILARITY:
        return unlike
    return f"{unsure}, or {unlike}"


# --- the retrieval baseline -----------------------------------------------------------------


class RetrievalBaseline:
    """Answers with the training reply whose context is most like the test context (TF-IDF).

    >>> baseline = RetrievalBaseline(train_transcripts)                # doctest: +SKIP
    >>> baseline.answer([Turn("user", "Where is my order?")])          # doctest: +SKIP
    'Could you give me the order number?'

    Every training agent turn that answers a customer message is indexed by its context: the
    customer's message just before it, and the agent's turn before that message (when there is
    one), as two fields. A test context scores ``cos(customer) + agent_weight * cos(agent)``
    against each training context. The customer's words carry the request; the agent's previous
    turn tells short follow-ups apart ("It is 12345." answers "Could you give me the order
    number?", not "How many items?"), and at half weight it decides only between training
    contexts whose customer messages match about equally well. Term weights: ``1 + ln(tf)``
    times the smoothed idf ``ln((1 + n) / (1 + df)) + 1``, each field L2-normalised. Ties go to
    the earliest training reply; a context sharing no word with the index gets the most frequent
    training reply.
    """

    def __init__(self, transcripts: Sequence[Transcript], *, agent_weight: float = AGENT_WEIGHT) -> None:
        cases = reply_cases(transcripts)
        if not cases:
            raise EvaluationError(
                "the training conversations hold no agent reply to a customer message",
                hint="check the training data",
            )
        self.agent_weight = agent_weight
        self.replies = [case.reference for case in cases]
        contexts = [_context_terms(case.history) for case in cases]
        self._idf = _idf(contexts)
        self._postings = _postings([self._vector(terms) for terms in contexts])
        self._fallback = Counter(self.replies).most_common(1)[0][0]

    def __len__(self) -> int:
        return len(self.replies)

    def answer(self, history: Sequence[Turn]) -> str:
        """The reply to ``history`` (the turns before the reply, the last one the customer's)."""
        query = self._vector(_context_terms(history))
        scores = np.zeros(len(self.replies))  # (n_replies,)
        for (field_name, word), weight in query.items():
            docs, weights = self._postings.get((field_name, word), _NO_POSTINGS)
            scale = self.agent_weight if field_name == "agent" else 1.0
            scores[docs] += scale * weight * weights
        best = int(np.argmax(scores))  # the first of equal scores: the earliest reply
        return self.replies[best] if scores[best] > 0 else self._fallback

    def _vector(self, terms: dict[str, Counter[str]]) -> dict[tuple[str, str], float]:
        """Per-field L2-normalised TF-IDF weights of a context."""
        vector: dict[tuple[str, str], float] = {}
        unseen = math.log(1 + len(self.replies)) + 1  # the idf of a word no training context has
        for field_name, counts in terms.items():
            raw = {w: (1 + math.log(n)) * self._idf.get((field_name, w), unseen) for w, n in counts.items()}
            norm = math.sqrt(sum(value * value for value in raw.values())) or 1.0
            vector.update({(field_name, w): value / norm for w, value in raw.items()})
        return vector


_NO_POSTINGS = (np.zeros(0, dtype=np.int64), np.zeros(0))


def _context_terms(history: Sequence[Turn]) -> dict[str, Counter[str]]:
    """The word counts of the customer's last message and of the agent turn before it."""
    terms = {"customer": Counter(words(history[-1].content)) if history else Counter()}
    if len(history) >= 2 and history[-2].role == "assistant":
        terms["agent"] = Counter(words(history[-2].content))
    return terms


def _idf(contexts: Sequence[dict[str, Counter[str]]]) -> dict[tuple[str, str], float]:
    """Smoothed inverse document frequency of every (field, word) of the index."""
    frequency: Counter[tuple[str, str]] = Counter()
    for terms in contexts:
        frequency.update((field_name, w) for field_name, counts in terms.items() for w in counts)
    n = len(contexts)
    return {key: math.log((1 + n) / (1 + df)) + 1 for key, df in frequency.items()}


def _postings(vectors: Sequence[dict[tuple[str, str], float]]) -> dict[tuple[str, str], tuple[Any, Any]]:
    """For each (field, word): the contexts that hold it and its weight in each (numpy arrays)."""
    lists: dict[tuple[str, str], tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for doc, vector in enumerate(vectors):
        for key, weight in vector.items():
            lists[key][0].append(doc)
            lists[key][1].append(weight)
    return {key: (np.asarray(docs, dtype=np.int64), np.asarray(ws)) for key, (docs, ws) in lists.items()}


def _baseline(
    train: Sequence[Transcript] | None, test: Sequence[Transcript], say: Progress
) -> tuple[RetrievalBaseline | None, list[str]]:
    """The baseline over ``train`` and notes (why there is none; test conversations it holds)."""
    if not train:
        return None, [f"{NO_BASELINE} no training conversations were given."]
    try:
        baseline = RetrievalBaseline(train)
    except EvaluationError as error:
        return None, [f"{NO_BASELINE} {error.message}."]
    say(f"retrieval baseline over {len(baseline)} training replies")
    shared = {t.id for t in test} & {t.id for t in train}
    if not shared:
        return baseline, []
    return baseline, [f"{len(shared)} test conversations are also in the training data (same id)."]


def _with_baseline(
    answered: Sequence[tuple[ReplyCase, ReplyRecord]], baseline: RetrievalBaseline | None
) -> list[ReplyRecord]:
    """The records, with the baseline's timed answer to the same cases when there is a baseline."""
    if baseline is None:
        return [record for _, record in answered]
    records = []
    for case, record in answered:
        started = time.perf_counter()
        text = baseline.answer(case.history)
        elapsed = (time.perf_counter() - started) * 1000
        records.append(replace(record, retrieval=text, retrieval_latency_ms=elapsed))
    return records


# --- scores ---------------------------------------------------------------------------------


class _WordTokenizer:
    """:func:`words` as a ``rouge_score`` tokenizer (its default drops non-ASCII text)."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_WordTokenizer())


def rouge_l(reference: str, reply: str) -> float:
    """ROUGE-L F1 of ``reply`` against ``reference`` (0..1), on :func:`words`."""
    return float(_rouge_scorer().score(reference, reply)["rougeL"].fmeasure)


def corpus_bleu(references: Sequence[str], replies: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0..100) of ``replies`` against one reference each.

    Its standard ``13a`` tokenizer, after splitting off each Chinese or Japanese character (13a
    alone reads a whole Japanese sentence as one word).
    """
    import sacrebleu

    hypotheses = [_split_cjk(reply) for reply in replies]
    return float(sacrebleu.corpus_bleu(hypotheses, [[_split_cjk(ref) for ref in references]]).score)


def _split_cjk(text: str) -> str:
    return CJK_CHARACTER.sub(r" \1 ", text)


def score_replies(
    system: str,
    description: str,
    references: Sequence[str],
    replies: Sequence[str],
    latencies_ms: Sequence[float],
    tokens: Sequence[int] | None = None,
) -> Scores:
    """One row of the table from the replies of one system."""
    if not replies:
        return Scores(system, description, 0, None, None, None, None, None)
    return Scores(
        system=system,
        description=description,
        replies=len(replies),
        rouge_l=float(np.mean([rouge_l(ref, reply) for ref, reply in zip(references, replies, strict=True)])),
        bleu=corpus_bleu(references, replies),
        latency_ms_mean=float(np.mean(latencies_ms)),
        latency_ms_p95=float(np.percentile(latencies_ms, 95)),
        tokens_per_reply=float(np.mean(tokens)) if tokens is not None else None,
    )


def _rows(records: Sequence[ReplyRecord], baseline: RetrievalBaseline | None) -> tuple[Scores, ...]:
    references = [r.reference for r in records]
    model = score_replies(
        MODEL,
        "greedy replies from the ONNX graph",
        references,
        [r.model for r in records],
        [r.model_latency_ms for r in records],
        [r.model_tokens for r in records],
    )
    if baseline is None:
        return (model,)
    retrieval = score_replies(
        RETRIEVAL,
        f"TF-IDF nearest neighbour over {len(baseline)} training replies",
        references,
        [r.retrieval or "" for r in records],
        [r.retrieval_latency_ms or 0.0 for r in records],
    )
    return model, retrieval
