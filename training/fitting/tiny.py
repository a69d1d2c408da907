"""Build a tiny, random, fully local model folder for tests and demos.

:func:`build_tiny_model` trains a byte-level BPE tokenizer on a small corpus, initialises a
small GPT-2 with random weights and writes a complete model folder (the same layout that
``chatbot train`` produces), optionally with its ONNX export. Nothing is downloaded; a build
takes a few seconds and is deterministic for a seed. The model's replies are gibberish: the
folder exists to exercise the engine, not to answer customers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatbot.errors import ModelFolderError
from chatbot.template import (
    ASSISTANT_TOKEN,
    DEFAULT_CHAT_TEMPLATE,
    END_OF_TEXT,
    END_OF_TURN,
    SPECIAL_TOKENS,
    SYSTEM_TOKEN,
    USER_TOKEN,
)
from training.card import new_card, write_card

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

DEFAULT_CORPUS: tuple[str, ...] = (
    "Hello! How can I help you today?",
    "Hi, I have a problem with my order.",
    "I'm sorry to hear that. Could you give me your order number?",
    "My order number is 48213.",
    "Thank you. Let me check the status of your order.",
    "Your parcel left our warehouse yesterday and should arrive within three days.",
    "Where is my package? It was supposed to arrive on Monday.",
    "The tracking page says the delivery was delayed by the carrier.",
    "Can I change the delivery address?",
    "Yes, you can change the address until the order ships.",
    "I would like to return a pair of shoes.",
    "Returns are free within 30 days of delivery.",
    "Please print the return label and drop the box at any post office.",
    "How long does a refund take?",
    "Refunds are processed within 5 to 7 business days after we receive the item.",
    "I was charged twice for the same order.",
    "I apologise for the inconvenience. I have reported the duplicate charge to billing.",
    "Can I cancel my subscription?",
    "You can cancel your subscription at any time from the account settings page.",
    "I forgot my password and cannot log in.",
    "Click 'Forgot password' on the login page and follow the link in the email.",
    "The reset email never arrived.",
    "Please check your spam folder, or I can send the link again.",
    "Do you ship to Canada?",
    "We ship to Canada, the United States and most of Europe.",
    "What are your opening hours?",
    "Our support team is available Monday to Friday, 9 am to 6 pm.",
    "Is this item available in blue?",
    "The jacket is currently out of stock in blue, but it will be back next week.",
    "Can you notify me when it is back in stock?",
    "Sure, I have added your email to the waiting list.",
    "The product arrived damaged.",
    "I'm very sorry. Could you send us a photo of the damage?",
    "We will send a replacement free of charge.",
    "How do I apply a discount code?",
    "Enter the code at checkout in the field labelled 'Promo code'.",
    "My discount code does not work.",
    "That code expired on 31 December, but here is a new one: SAVE10.",
    "Can I pay with PayPal?",
    "We accept credit cards, PayPal and bank transfers.",
    "I need an invoice for my company.",
    "You can download the invoice from the 'Orders' section of your account.",
    "Is my personal data safe with you?",
    "We never share your data with third parties without your consent.",
    "Thank you for your help!",
    "You're welcome. Is there anything else I can do for you?",
    "No, that's all. Have a nice day.",
    "Have a great day too. Goodbye!",
    "Bonjour, je voudrais suivre ma commande.",
    "Ça arrive demain, désolé pour le retard.",
    "¿Dónde está mi pedido? Llegó dañado.",
    "Grüße aus München: die Größe passt nicht, ich möchte umtauschen.",
    "Olá! A encomenda não chegou à morada certa.",
    "注文した商品がまだ届きません。",
    "配送状况请查看订单页面。谢谢！",
    "주문 번호를 알려 주세요.",
    "Спасибо за помощь!",
    "Great service, thanks! 😊👍",
    "My package is lost 📦😢 can you help?",
    "Price: €49.99 / £42 / ¥6,500 — tax included ✓",
)

ROLE_TOKENS = (SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_OF_TURN)

# What a model folder may hold; an existing out_dir with anything else is never deleted.
FOLDER_ENTRIES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "card.json",
        "onnx",
    }
)


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    vocab_size: int = 512,
    n_positions: int = 256,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    corpus: Iterable[str] | None = None,
    export: bool = True,
    name: str = "tiny-gpt2",
) -> Path:
    """Write a complete tiny model folder at ``out_dir`` and return its path.

    The tokenizer is trained on ``corpus`` (default: :data:`DEFAULT_CORPUS`), the GPT-2 weights
    are random for ``seed``; with ``export`` the folder also gets ``onnx/model.onnx`` (see
    :func:`training.export.reference.export_onnx`). The folder is built next to ``out_dir`` and moved into
    place at the end, so a failed build leaves ``out_dir`` as it was. ``out_dir`` may be missing,
    empty, or an earlier model folder (which is replaced); a folder holding other files is refused.
    """
    out = Path(out_dir).expanduser().resolve()
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-build-", dir=out.parent))
    try:
        write_random_folder(
            staging,
            seed=seed,
            vocab_size=vocab_size,
            corpus=corpus,
            name=name,
            sizes={
                "n_positions": n_positions,
                "n_embd": n_embd,
                "n_layer": n_layer,
                "n_head": n_head,
            },
        )
        if export:
            from training.export.fused_graph import build_variants
            from training.export.reference import export_onnx

            export_onnx(staging)
            build_variants(staging)  # cpu-int8: what the engine serves on a CPU
        move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_replaceable(out: Path) -> None:
    """Refuse ``out`` unless it is missing, empty, or holds only model-folder files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ModelFolderError(f"{out} is a file, not a folder", hint="choose another path")
    strangers = sorted(p.name for p in out.iterdir() if p.name not in FOLDER_ENTRIES)
    if strangers:
        raise ModelFolderError(
            f"{out} holds files that are not part of a model folder ({', '.join(strangers[:5])})",
            hint="choose a new folder or delete this one first",
        )


def move_into_place(staging: Path, out: Path) -> None:
    """Replace ``out`` (missing, empty or an old model folder) with the finished ``staging``."""
    staging.chmod(0o755)  # mkdtemp makes the folder private; a model folder is shared like others
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)


def write_random_folder(
    folder: Path,
    *,
    seed: int,
    vocab_size: int,
    corpus: Iterable[str] | None,
    name: str,
    sizes: dict[str, int],
    model_vocab: int | None = None,
    shape: str = "tiny",
    description: str | None = None,
) -> None:
    """Write tokenizer, random weights, generation settings and card into ``folder``.

    The tokenizer has ``vocab_size`` tokens, trained on ``corpus``; ``model_vocab`` grows the
    embedding (and the tied LM head) past it, to a real model's size (``chatbot bench``'s shapes).
    """
    tokenizer = wrap_tokenizer(
        train_tokenizer(DEFAULT_CORPUS if corpus is None else corpus, vocab_size=vocab_size),
        n_positions=sizes["n_positions"],
    )
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    model = random_model(tokenizer, seed=seed, **sizes)
    if model_vocab is not None:
        model.resize_token_embeddings(model_vocab, mean_resizing=False)
    model.save_pretrained(folder, safe_serialization=True)
    base_model = f"random GPT-2 ({shape} config, seed {seed})"
    card = new_card(name=name, base_model=base_model, description=description or _describe(model))
    write_card(folder, card)


def train_tokenizer(corpus: Iterable[str], *, vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``corpus``.

    The 256 byte symbols are always in the vocabulary, so every text is encodable and no token
    is ever unknown; :data:`chatbot.template.SPECIAL_TOKENS` come first (``<|endoftext|>`` is
    id 0). Training is deterministic for the same corpus and vocabulary size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer, *, n_positions: int) -> PreTrainedTokenizerFast:
    """The transformers tokenizer around ``tokenizer``, with the chat template and roles."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=DEFAULT_CHAT_TEMPLATE,
        model_max_length=n_positions,
        clean_up_tokenization_spaces=False,
    )


def random_model(tokenizer: PreTrainedTokenizerFast, *, seed: int, **sizes: Any) -> GPT2LMHeadModel:
    """A GPT-2 with random weights for ``seed`` and the folder's generation settings.

    The global torch random state is restored afterwards, so building does not disturb the
    caller's random numbers.
    """
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    eot = _token_id(tokenizer, END_OF_TEXT)
    end = _token_id(tokenizer, END_OF_TURN)
    config = GPT2Config(
        vocab_size=len(tokenizer), bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, **sizes
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[end, eot], pad_token_id=eot)
    return model


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of one special token (which the tokenizer always has)."""
    found = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(found, int), f"{token} is not one token"
    return found


def _describe(model: Any) -> str:
    """A one-line description of the random model for the card."""
    c = model.config
    return (
        f"Tiny GPT-2 with random weights for tests ({c.n_layer} layers, {c.n_head} heads, "
        f"{c.n_embd} dims, {c.vocab_size} tokens, {c.n_positions} positions); "
        "its replies are gibberish."
    )
