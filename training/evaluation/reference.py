"""A reference :class:`~chatbot.generation.Generator` on transformers, for parity tests and benchmarks.

It runs the same model folder with PyTorch (the safetensors weights) through the engine's own
decode loop (:func:`chatbot.generation.decode`), so only the forward pass differs: greedy ONNX and
greedy transformers must choose the same token ids.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence

import numpy as np

from chatbot.folder import ModelFolder
from chatbot.generation import Token, decode
from chatbot.types import GenerationConfig
from chatbot.versions import model_folder


class TransformersGenerator:
    """Generation with ``GPT2LMHeadModel`` and its own KV cache, on the CPU.

    The cache is passed and read back under the name the model's ``forward`` takes: ``cache`` in
    current transformers 5 releases, ``past_key_values`` in the earlier ones.
    """

    def __init__(self, folder: ModelFolder | str | os.PathLike[str]) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.folder = folder if isinstance(folder, ModelFolder) else model_folder(folder)
        self.model = AutoModelForCausalLM.from_pretrained(self.folder.path, dtype=torch.float32).eval()
        self.stop_token_ids = self.folder.stop_token_ids
        self._torch = torch
        forward = inspect.signature(self.model.forward).parameters
        self._cache = "cache" if "cache" in forward else "past_key_values"

    def generate(
        self,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        *,
        key: str | None = None,
        shared: int = 0,
    ) -> Iterator[Token]:
        torch = self._torch
        past = None

        def step(ids: Sequence[int], start: int) -> np.ndarray:
            nonlocal past
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([list(ids)]), use_cache=True, **{self._cache: past})
            past = out[self._cache]
            return out.logits[0, -1].float().numpy()

        spec = self.folder.spec
        return decode(
            step,
            prompt_ids,
            config,
            n_positions=spec.n_positions,
            vocab_size=spec.vocab_size,
            stop_token_ids=self.stop_token_ids,
        )
