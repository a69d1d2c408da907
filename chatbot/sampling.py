"""Choosing the next token from logits: greedy or sampled, in numpy.

Everything here works on one row of logits (vocab,) in float32 and costs a few vector passes;
no per-step allocation grows with the reply length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chatbot.types import GenerationConfig


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities of a row of logits, computed stably."""
    shifted = logits - np.max(logits)
    return shifted - np.log(np.sum(np.exp(shifted)))


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's penalty: divide positive logits of seen tokens by ``penalty``, multiply negative ones.

    ``seen`` is a boolean mask over the vocabulary.
    """
    if penalty == 1.0:
        return logits
    penalised = np.where(logits > 0, logits / penalty, logits * penalty)
    return np.where(seen, penalised, logits)


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.size:
        return logits
    threshold = np.partition(logits, -k)[-k]
    return np.where(logits < threshold, -np.inf, logits)


def _top_p(logits: np.ndarray, p: float) -> np.ndarray:
    if p >= 1.0:
        return logits
    order = np.argsort(-logits)
    probs = np.exp(log_softmax(logits[order]))
    # keep tokens until the cumulative probability reaches p (the first token is always kept)
    keep = np.cumsum(probs) - probs < p
    out = np.full_like(logits, -np.inf)
    out[order[keep]] = logits[order[keep]]
    return out


class Sampler:
    """Picks the tokens of one reply with the settings of a :class:`GenerationConfig`.

    Keeps a boolean mask of the tokens seen so far (prompt and reply) for the repetition
    penalty, so each step costs the same however long the reply grows.
    """

    def __init__(self, config: GenerationConfig, *, vocab_size: int, prompt_ids: Sequence[int]) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._seen = np.zeros(vocab_size, dtype=bool)
        self._seen[np.asarray(prompt_ids, dtype=np.int64)] = True

    @property
    def argmax_only(self) -> bool:
        """True when the pick is always the largest logit (greedy, no repetition penalty)."""
        return self.config.greedy and self.config.repetition_penalty == 1.0

    def accept(self, token: int) -> None:
        """Record ``token``, picked elsewhere (the graph's own argmax), as generated."""
        self._seen[token] = True

    def pick(self, logits: np.ndarray) -> int:
        """The next token id given the last position's logits (vocab,)."""
        cfg = self.config
        scores = apply_repetition_penalty(logits, self._seen, cfg.repetition_penalty)
        if cfg.greedy:
            token = int(np.argmax(scores))
        else:
            scores = _top_p(_top_k(scores / cfg.temperature, cfg.top_k), cfg.top_p)
            probs = np.exp(log_softmax(scores))
            token = int(self._rng.choice(probs.size, p=probs / probs.sum()))
        self._seen[token] = True
        return token
