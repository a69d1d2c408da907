"""Loading and validating a model folder (the contract between training and the engine).

A model folder holds the Hugging Face files (``config.json``, ``tokenizer.json``,
``tokenizer_config.json`` with the ``chat_template``, safetensors weights), the ONNX export
(``onnx/model.onnx``) and ``card.json``. Serving reads only what it needs and never imports torch.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from chatbot.card import read_card
from chatbot.drafting import DraftTable
from chatbot.errors import ModelFolderError
from chatbot.scope import SCOPE_FILE, SCOPE_HEADER, ScopeIndex
from chatbot.template import END_OF_TEXT, END_OF_TURN, ChatTemplate

TRAIN_HINT = "create it with `chatbot train` (or `chatbot demo` for the default model)"
EXPORT_HINT = "run `chatbot export {folder}` to write it"

# file -> how to make it again
REQUIRED_FILES = {
    "config.json": TRAIN_HINT,
    "tokenizer.json": TRAIN_HINT,
    "tokenizer_config.json": TRAIN_HINT,
    "onnx/model.onnx": EXPORT_HINT,
    "card.json": EXPORT_HINT,
}

# The fused graphs' interface (training.export.fused_graph writes it into each variant's card entry):
# 1 = logits and next_token; 2 = also next_logprob, next_position_ids and next_seqlens_k.
GRAPH_FORMAT = 2
TABLES_FILE = "embeddings.bin"  # the CPU graphs' float embedding tables, beside them (ONNX external data)


@dataclass(frozen=True)
class ModelSpec:
    """The few facts about the network the engine needs (read from ``config.json``)."""

    n_positions: int  # context window in tokens
    n_layer: int
    n_head: int
    head_dim: int
    vocab_size: int


def trained_system_prompt(card: dict[str, Any]) -> str | None:
    """The system prompt a model card records its training with (``training.system_prompt``), if any."""
    value = (card.get("training") or {}).get("system_prompt")
    return value if isinstance(value, str) else None


def read_json_object(file: Path, *, hint: str = TRAIN_HINT) -> dict[str, Any]:
    """A model folder's JSON file, which must hold an object; :class:`ModelFolderError` naming the
    file and ``hint`` otherwise."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{file} is not readable JSON: {error}", hint=hint) from error
    if not isinstance(data, dict):
        raise ModelFolderError(f"{file} must hold a JSON object", hint=hint)
    return data


SCOPE_HINT = (
    "train the model again with `chatbot train` (it writes the index), or delete {files} "
    "to serve without the out-of-scope signal"
)


def load_scope(folder: str | os.PathLike[str]) -> ScopeIndex | None:
    """The scope index of a model folder (``scope.npz`` and its header ``scope.json``), or ``None``
    when it has neither (the out-of-scope signal is then off); :class:`ModelFolderError` naming the
    file when one is missing, broken or of another format."""
    path = Path(folder)
    data_file, header_file = path / SCOPE_FILE, path / SCOPE_HEADER
    if not data_file.exists() and not header_file.exists():
        return None
    hint = SCOPE_HINT.format(files=f"{data_file} and {header_file}")
    return ScopeIndex.from_files(data_file, read_json_object(header_file, hint=hint), hint=hint)


TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 saves a template by default


def chat_template(tokenizer_config: dict[str, Any], where: Path) -> ChatTemplate:
    """The chat template of a folder's ``tokenizer_config.json`` (read from ``where``), or of the
    ``chat_template.jinja`` beside it, with the special tokens the config names;
    :class:`ModelFolderError` when there is none."""
    source = tokenizer_config.get("chat_template")
    beside = where.parent / TEMPLATE_FILE
    if not (isinstance(source, str) and source.strip()) and beside.is_file():
        try:
            source = beside.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ModelFolderError(f"{beside} is not readable: {error}", hint=TRAIN_HINT) from error
    if not isinstance(source, str) or not source.strip():
        raise ModelFolderError(
            f"{where} has no chat_template (and there is no {TEMPLATE_FILE} beside it)",
            hint="the chat template belongs in the model folder; " + TRAIN_HINT,
        )
    special = {
        key: value
        for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        if isinstance(value := tokenizer_config.get(key), str)
    }
    return ChatTemplate(source, special_tokens=special)


class ModelFolder:
    """A validated model folder.

    >>> folder = ModelFolder("models/current")   # doctest: +SKIP
    >>> folder.spec.n_positions                   # doctest: +SKIP
    1024

    ``path`` is the folder itself. A versions root (``models``) is resolved to its current
    version before, by :func:`chatbot.versions.model_folder`, which every entry point that takes
    either uses.

    Raises :class:`ModelFolderError` naming the missing or broken file and the command that
    makes it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise ModelFolderError(
                f"model folder {self.path} does not exist or is not a folder", hint=TRAIN_HINT
            )
        for name, hint in REQUIRED_FILES.items():
            if not (self.path / name).is_file():
                if (self.path / "current").is_symlink():  # a versions root given where a folder goes
                    hint = "it is a versions root: load it with chatbot.versions.model_folder"
                raise ModelFolderError(
                    f"model folder {self.path} has no {name}", hint=hint.format(folder=self.path)
                )
        # Read everything once, up front, so a broken file fails at start-up, not mid-reply.
        self.config = self._read_json("config.json")
        self.tokenizer_config = self._read_json("tokenizer_config.json")
        self.card = read_card(self.path)
        self.spec = self._spec()
        self.tokenizer = self._tokenizer()
        self.template = self._template()
        self.stop_token_ids = self._stop_token_ids()

    @property
    def onnx_path(self) -> Path:
        return self.path / "onnx" / "model.onnx"

    def variant_path(self, variant: str) -> Path:
        """``onnx/<variant>/model.onnx``, a fast graph written from the weights
        (training.export.fused_graph)."""
        return self.path / "onnx" / variant / "model.onnx"

    @property
    def variants(self) -> list[str]:
        """The fast variants this folder holds: recorded in the card and present on disk."""
        recorded = self.card.get("onnx")
        names = recorded if isinstance(recorded, dict) else {}
        return [name for name in names if name != "reference" and self.variant_path(name).is_file()]

    def variant_is_current(self, variant: str) -> bool:
        """Whether ``variant`` was written by this version's graph builder (its card entry's
        ``format`` is :data:`GRAPH_FORMAT`); older graphs lack outputs the engine now binds."""
        entry = (self.card.get("onnx") or {}).get(variant)
        return isinstance(entry, dict) and entry.get("format") == GRAPH_FORMAT

    @property
    def name(self) -> str:
        return str(self.card.get("name") or self.path.name)

    @cached_property
    def version(self) -> str:
        """Which model answered, as replies record it (``meta["model"]``): the name, and the
        version folder when the folder is one of a versions root's (``support-bot/v3``). Read
        once: every reply records it, and resolving the path asks the file system."""
        folder = self.path.resolve().name
        if folder != self.name and re.fullmatch(r"v\d+", folder):
            return f"{self.name}/{folder}"
        return self.name

    @property
    def system_prompt(self) -> str | None:
        """The system prompt the model was trained with (``chatbot train --system-prompt``), if any:
        conversations without their own get it, as the training conversations did."""
        return trained_system_prompt(self.card)

    def _read_json(self, name: str) -> dict[str, Any]:
        return read_json_object(self.path / name, hint=REQUIRED_FILES.get(name, TRAIN_HINT))

    def _spec(self) -> ModelSpec:
        cfg = self.config
        try:
            n_embd, n_head = int(cfg["n_embd"]), int(cfg["n_head"])
            return ModelSpec(
                n_positions=int(cfg["n_positions"]),
                n_layer=int(cfg["n_layer"]),
                n_head=n_head,
                head_dim=n_embd // n_head,
                vocab_size=int(cfg["vocab_size"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFolderError(
                f"{self.path / 'config.json'} is not a GPT-2 config (missing or bad {error})",
                hint="the engine serves GPT-2 models; " + TRAIN_HINT,
            ) from error

    def _tokenizer(self) -> Tokenizer:
        file = self.path / "tokenizer.json"
        try:
            return Tokenizer.from_file(str(file))
        except Exception as error:  # tokenizers raises a bare Exception on a broken file
            raise ModelFolderError(f"{file} is not a valid tokenizer: {error}", hint=TRAIN_HINT) from error

    def _template(self) -> ChatTemplate:
        return chat_template(self.tokenizer_config, self.path / "tokenizer_config.json")

    def _stop_token_ids(self) -> tuple[int, ...]:
        """Tokens that end a reply: generation_config.json's eos ids, else <|end|> and <|endoftext|>."""
        file = self.path / "generation_config.json"
        ids: list[int] = []
        if file.is_file():
            eos = self._read_json("generation_config.json").get("eos_token_id")
            ids = [eos] if isinstance(eos, int) else [int(i) for i in eos or []]
        if not ids:
            ids = [i for t in (END_OF_TURN, END_OF_TEXT) if (i := self.tokenizer.token_to_id(t)) is not None]
        if not ids:
            raise ModelFolderError(
                f"{self.path} defines no end-of-turn token, so replies would never stop",
                hint=f"add {END_OF_TURN} to the tokenizer and eos_token_id to generation_config.json",
            )
        return tuple(ids)

    @cached_property
    def scope(self) -> ScopeIndex | None:
        """The index of the customer turns the model was trained on (``scope.npz``, written by
        ``chatbot train``), or ``None`` for a folder without one: the out-of-scope signal is then
        off. Loaded on first use (the engine uses it at start-up); a broken index raises
        :class:`ModelFolderError` naming the file."""
        return load_scope(self.path)

    @cached_property
    def drafts(self) -> DraftTable | None:
        """What followed each short context in the agent turns the model was trained on
        (``drafts.npz``, written by ``chatbot train``): speculative decoding's drafts. ``None``
        for a folder without one (drafts then come from the conversation and recent replies, and
        drafting is off unless ``$CHATBOT_DRAFT_TOKENS`` is set); a broken table raises
        :class:`ModelFolderError` naming the file."""
        return DraftTable.load(self.path)

    @cached_property
    def reserved_markers(self) -> tuple[str, ...]:
        """Special-token strings a user may not type (they would forge turns in the prompt)."""
        return tuple(
            token.content for token in self.tokenizer.get_added_tokens_decoder().values() if token.special
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of an already rendered prompt (no extra special tokens, as transformers does)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids
