"""A quiet progress display for the ``Trainer``: one bar, the loss on it, a line per evaluation.

transformers prints every logged dictionary; a support engineer wants to see how far the run
is and whether the validation loss still falls. Only the first process draws.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from transformers import TrainerCallback


class TrainingProgress(TrainerCallback):
    """A tqdm bar over the optimisation steps, with the latest loss and learning rate."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.enabled and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, desc="training", unit="step", file=sys.stderr)
            self.bar.update(state.global_step)  # non-zero when resuming

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{logs.get('learning_rate', 0):.1e}")

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics:
            return
        loss = metrics["eval_loss"]
        line = (
            f"epoch {state.epoch:.2f}, step {state.global_step}: validation loss {loss:.4f} "
            f"(perplexity {math.exp(min(loss, 50)):.2f})"
        )
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
