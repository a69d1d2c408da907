"""A reference :class:`~chatbot.generation.Generator` on transformers, for parity tests and benchmarks.

It runs the same model folder with PyTorch (the safetensors weights) and the same sampling code
as the engine, so greedy ONNX and greedy transformers must choose the same token ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from chatbot.folder import ModelFolder
from chatbot.generation import Token
from chatbot.sampling import Sampler, log_softmax
from chatbot.types import GenerationConfig


class TransformersGenerator:
    """Generation with ``GPT2LMHeadModel`` and its own KV cache (``past_key_values``), on the CPU."""

    def __init__(self, folder: ModelFolder | str | os.PathLike[str]) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.folder = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
        self.model = AutoModelForCausalLM.from_pretrained(self.folder.path, dtype=torch.float32).eval()
        self.stop_token_ids = self.folder.stop_token_ids
        self._torch = torch

    def generate(self, prompt_ids: Sequence[int], config: GenerationConfig) -> Iterator[Token]:
        torch = self._torch
        spec = self.folder.spec
        sampler = Sampler(config, vocab_size=spec.vocab_size, prompt_ids=prompt_ids)
        budget = min(config.max_new_tokens, spec.n_positions - len(prompt_ids))
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        past = None
        with torch.inference_mode():
            for _ in range(budget):
                out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float().numpy().astype(np.float32)
                token = sampler.pick(logits)
                yield Token(token, float(log_softmax(logits)[token]))
                if token in self.stop_token_ids:
                    return
                ids = torch.tensor([[token]], dtype=torch.long)
