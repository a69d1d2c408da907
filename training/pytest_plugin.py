"""Pytest fixtures that build tiny model folders (registered under the ``pytest11`` entry point).

Channel and engine tests get a real, complete model folder without downloading anything::

    def test_reply(tiny_model_dir):
        engine = Engine(tiny_model_dir)

    def test_small_context(tiny_model_factory):
        folder = tiny_model_factory(n_positions=64, export=False)

    def test_my_channel(tiny_engine):          # an Engine on a real SQLite file in tmp_path
        conversation = tiny_engine.start()
        assert tiny_engine.reply(conversation.id, "Hello").text is not None

Folders are built once per test session (a few seconds each) and must be treated as
read-only; copy one (``shutil.copytree``) before changing it. Nothing heavy is imported when
pytest loads this plugin: the builder is imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from chatbot import Engine

TinyModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    """A callable ``(**build_kwargs) -> Path`` building tiny model folders, one per distinct kwargs.

    The keyword arguments are those of :func:`training.fitting.tiny.build_tiny_model` except
    ``out_dir``; asking twice for the same arguments returns the same folder.
    """
    built: dict[str, Path] = {}

    def build(**build_kwargs: Any) -> Path:
        if "out_dir" in build_kwargs:
            raise TypeError("tiny_model_factory chooses the folder itself; do not pass out_dir")
        if build_kwargs.get("corpus") is not None:
            build_kwargs["corpus"] = tuple(build_kwargs["corpus"])
        key = repr(sorted(build_kwargs.items()))
        if key not in built:
            from training.fitting.tiny import build_tiny_model

            folder = tmp_path_factory.mktemp("tiny-model")
            built[key] = build_tiny_model(folder, **build_kwargs)
        return built[key]

    return build


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_factory: TinyModelFactory) -> Path:
    """A complete tiny model folder with its ONNX export, built once per session (read-only)."""
    return tiny_model_factory()


@pytest.fixture
def tiny_engine(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Engine]:
    """An :class:`~chatbot.Engine` on the tiny model, with a fresh SQLite store in ``tmp_path``
    and short replies (16 new tokens); closed after the test."""
    from chatbot import Engine, EngineConfig, GenerationConfig

    config = EngineConfig(generation=GenerationConfig(max_new_tokens=16))
    with Engine.from_folder(tiny_model_dir, store=tmp_path / "conversations.db", config=config) as engine:
        yield engine
