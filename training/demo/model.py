"""The default model of ``chatbot demo``: trained once, offline, from the bundled sample.

The first ``chatbot demo`` writes the synthetic shop corpus (:mod:`training.demo.corpus`), trains a
small GPT-2 from scratch on it with ``chatbot train``'s own pipeline and keeps the result as a
versions root in the user's cache folder; later starts find it there and take seconds.

Example::

    from training.demo.model import ensure_demo_model
    folder = ensure_demo_model()  # trains on the first call only
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatbot import settings
from chatbot.drafting import DRAFTS_FILE
from chatbot.errors import ChatbotError
from chatbot.versions import ModelVersions
from training.demo.corpus import write_sample
from training.fitting.train import TrainOptions, index_folder, train


@dataclass(frozen=True)
class DemoRecipe:
    """How the default model is made (about four minutes on a 2-core CPU)."""

    conversations: int = 2000  # sample conversations written and trained on
    seed: int = 0  # for the sample, the split and the weights
    size: str = "small"  # from training.fitting.train.SIZES
    epochs: float = 8.0
    batch_size: int = 32
    learning_rate: float = 3e-3
    eval_replies: int = 400  # replies generated for the report's evaluation (~25 ms each)


DEMO_RECIPE = DemoRecipe()


def demo_root() -> Path:
    """Where the default model's versions live: ``~/.cache/chatbot/demo``."""
    return settings.cache_home() / "demo"


def ensure_demo_model(
    *,
    rebuild: bool = False,
    recipe: DemoRecipe = DEMO_RECIPE,
    root: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The default model folder, trained first when there is none yet (or ``rebuild``)."""
    root = Path(root) if root is not None else demo_root()
    current = ModelVersions(root=root).current()
    say = progress or (lambda message: None)
    if current is not None and not rebuild:
        if not (current.path / DRAFTS_FILE).exists():  # trained before draft tables: add one
            _add_indexes(current.path, say)
        return current.path
    say(f"training the default model in {root} (once; later starts reuse it)")
    sample = write_sample(root.parent / f"{root.name}-sample.jsonl", n=recipe.conversations, seed=recipe.seed)
    options = TrainOptions(
        data=(str(sample),),
        out=root,
        from_scratch=recipe.size,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        seed=recipe.seed,
        eval_replies=recipe.eval_replies,
        name="demo",
    )
    result = train(options, progress=progress)
    assert result.folder is not None  # one process: this one writes the folder
    return result.folder


def _add_indexes(folder: Path, say: Callable[[str], None]) -> None:
    """Index a cached default model's training sample (the draft table, and the scope index): it
    was trained by an older version. Seconds, not a new training; the chat works without them."""
    say(f"{folder} has no draft table yet: indexing its training sample (once)")
    try:
        index_folder(folder, progress=say)
    except ChatbotError as error:
        say(f"could not index it ({error}); it serves without speculative decoding")
