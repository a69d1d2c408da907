"""The model folder contract: what the tiny builder writes, and how the ONNX export behaves."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatbot.card import read_card
from chatbot.errors import ExportError, ModelFolderError
from chatbot.template import (
    DEFAULT_CHAT_TEMPLATE,
    END_OF_TEXT,
    END_OF_TURN,
    SPECIAL_TOKENS,
    ChatTemplate,
)
from training.card import update_card, write_card
from training.export.reference import export_onnx
from training.fitting.tiny import build_tiny_model

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are a helpful support agent."},
        {"role": "user", "content": "Where is my order #48213?"},
        {"role": "assistant", "content": "It ships tomorrow."},
        {"role": "user", "content": "Merci ! 😊 注文"},
    ],
    [
        {"role": "user", "content": "  leading and trailing spaces  "},
        {"role": "assistant", "content": "line one\nline two\n\n{{ not a template }}"},
    ],
]


def _temp_leftovers(folder: Path) -> list[str]:
    """Names of scratch files or folders that a finished operation should not leave behind."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_same_seed_builds_the_same_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", export=False)
    other = build_tiny_model(tmp_path / "other", seed=1, export=False)
    for name in ("tokenizer.json", "model.safetensors"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    assert (other / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    assert not (again / "onnx").exists()


def test_builder_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ModelFolderError, match=r"not part of a model folder \(keep.txt\)"):
        build_tiny_model(tmp_path, export=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_builder_replaces_an_earlier_model_folder(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "model", export=False)
    first = (folder / "model.safetensors").read_bytes()
    assert build_tiny_model(folder, seed=1, export=False) == folder
    assert (folder / "model.safetensors").read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_folder_has_the_contract_files(tiny_model_dir: Path) -> None:
    names = {p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*")}
    expected = {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "card.json",
        "onnx",
        "onnx/model.onnx",
        "onnx/cpu-int8",
        "onnx/cpu-int8/model.onnx",
        "onnx/cpu-int4",
        "onnx/cpu-int4/model.onnx",
        # int8 keys and values (the default): each graph's scales, and the prompts' float32 twin
        "onnx/cpu-int8/kv_scales.npy",
        "onnx/cpu-int4/kv_scales.npy",
        "onnx/cpu-int8/prefill.onnx",
        # the CPU graphs' float embedding tables, mapped by ONNX Runtime (shared by the two int8 graphs)
        "onnx/cpu-int8/embeddings.bin",
        "onnx/cpu-int4/embeddings.bin",
    }
    assert expected <= names
    assert "chat_template.jinja" not in names
    assert names - expected <= {"onnx/model.onnx_data"}


def test_tokenizer_config_holds_the_chat_template(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert config["eos_token"] == config["bos_token"] == config["pad_token"] == END_OF_TEXT
    assert config["model_max_length"] == 256


def test_generation_config_stops_at_end_of_turn(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    eot = tokenizer.token_to_id(END_OF_TEXT)
    assert generation["eos_token_id"] == [tokenizer.token_to_id(END_OF_TURN), eot]
    assert generation["pad_token_id"] == generation["bos_token_id"] == eot


def test_card_records_build_and_export(tiny_model_dir: Path) -> None:
    card = read_card(tiny_model_dir)
    assert card["format"] == 1
    assert card["name"] == "tiny-gpt2"
    assert card["base_model"] == "random GPT-2 (tiny config, seed 0)"
    assert datetime.fromisoformat(card["created_at"]).utcoffset().total_seconds() == 0
    assert set(card["versions"]) == {
        "python",
        "torch",
        "transformers",
        "tokenizers",
        "huggingface-hub",
        "datasets",
        "accelerate",
        "onnx",
        "onnxruntime",
    }
    reference = card["onnx"]["reference"]
    assert reference["path"] == "onnx/model.onnx"
    assert reference["exporter"] == f"chatbot.training.portable {metadata.version('chatbot')}"
    assert reference["opset"] == 17
    assert reference["task"] == "text-generation-with-past"
    assert isinstance(reference["opset"], int)
    datetime.fromisoformat(reference["exported_at"])
    parity = reference["parity"]
    assert parity["sequences"] == 4 and parity["decode_steps"] == 4
    assert 0 <= parity["max_abs_diff"] <= parity["tolerance"] == 1e-3


def test_folder_loads_with_transformers(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.n_positions == tokenizer.model_max_length == 256
    assert tokenizer.extra_special_tokens == list(SPECIAL_TOKENS[1:])


@pytest.mark.parametrize("text", ["Où est ma commande ? 🚚", "Ω≈ç√∫ ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\x00\t\r\n"])
def test_every_text_encodes_without_unknown_tokens(tiny_model_dir: Path, text: str) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    ids = tokenizer.encode(text).ids
    assert tokenizer.token_to_id(END_OF_TEXT) not in ids
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    text = "".join(SPECIAL_TOKENS)
    assert tokenizer.encode(text).ids == [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_transformers_renders_like_the_engine(
    tiny_model_dir: Path, messages: list[dict[str, str]], add_generation_prompt: bool
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    engine = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
    assert rendered == engine.render(messages, add_generation_prompt=add_generation_prompt)


def test_unknown_role_raises(tiny_model_dir: Path) -> None:
    messages = [{"role": "tool", "content": "42"}]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(TemplateError, match="Unknown role tool"):
        tokenizer.apply_chat_template(messages, tokenize=False)
    with pytest.raises(TemplateError, match="Unknown role tool"):
        ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(messages)


def test_export_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="does not exist") as caught:
        export_onnx(tmp_path / "missing")
    assert "chatbot train" in str(caught.value)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_export_refuses_an_incomplete_folder(tiny_model_dir: Path, tmp_path: Path, missing: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / missing).unlink()
    with pytest.raises(ModelFolderError, match=missing) as caught:
        export_onnx(folder)
    assert "chatbot train" in str(caught.value)


@pytest.mark.parametrize("options", [{"tolerance": -1.0}, {"sequences": 0}, {"decode_steps": 0}])
def test_export_refuses_meaningless_options(tiny_model_dir: Path, options: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        export_onnx(tiny_model_dir, **options)


def test_failing_parity_writes_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    diff = read_card(folder)["onnx"]["reference"]["parity"]["max_abs_diff"]
    if diff == 0:
        pytest.skip("the export is bit-exact here, so no honest tolerance can fail")
    before = (folder / "onnx" / "model.onnx").read_bytes()
    card_before = (folder / "card.json").read_text()
    with pytest.raises(ExportError, match="nothing was written") as caught:
        export_onnx(folder, tolerance=diff / 2)
    assert "report the model config" in str(caught.value)
    assert (folder / "onnx" / "model.onnx").read_bytes() == before
    assert (folder / "card.json").read_text() == card_before
    assert _temp_leftovers(folder) == []


def test_reexport_replaces_the_record_and_keeps_unknown_keys(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    update_card(folder, {"training": {"epochs": 3}, "onnx": {"int8": {"path": "onnx/q.onnx"}}})
    messages: list[str] = []
    parity = export_onnx(folder, sequences=2, decode_steps=2, progress=messages.append)
    card = read_card(folder)
    assert card["onnx"]["reference"]["parity"] == parity
    assert parity["sequences"] == 2 and parity["max_abs_diff"] <= 1e-3
    assert card["training"] == {"epochs": 3}
    assert card["onnx"]["int8"] == {"path": "onnx/q.onnx"}
    assert len(messages) >= 2
    assert _temp_leftovers(folder) == []


def test_write_card_is_atomic_and_readable(tmp_path: Path) -> None:
    write_card(tmp_path, {"format": 1, "name": "x"})
    assert read_card(tmp_path) == {"format": 1, "name": "x"}
    assert (tmp_path / "card.json").stat().st_mode & 0o644 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_newer_card_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "card.json").write_text('{"format": 99}')
    with pytest.raises(ModelFolderError, match="upgrade"):
        read_card(tmp_path)


def test_factory_caches_per_arguments(tiny_model_factory, tiny_model_dir: Path) -> None:
    assert tiny_model_factory() == tiny_model_dir
    small = tiny_model_factory(n_positions=32, export=False)
    assert small == tiny_model_factory(export=False, n_positions=32)
    assert small != tiny_model_dir
    assert json.loads((small / "config.json").read_text())["n_positions"] == 32


def test_a_template_saved_beside_the_config_is_read(tiny_model_dir: Path, tmp_path: Path) -> None:
    """transformers 5 saves a chat template as chat_template.jinja unless told otherwise: a folder
    saved that way by another tool serves the same."""
    from chatbot import ModelFolder

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "chat_template.jinja").write_text(config.pop("chat_template"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    messages = [{"role": "user", "content": "Hi"}]
    expected = ModelFolder(tiny_model_dir).template.render(messages, add_generation_prompt=True)
    assert ModelFolder(folder).template.render(messages, add_generation_prompt=True) == expected
    assert AutoTokenizer.from_pretrained(folder).chat_template == DEFAULT_CHAT_TEMPLATE
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(ModelFolderError, match="no chat_template") as caught:
        ModelFolder(folder)
    assert "chatbot train" in str(caught.value)
