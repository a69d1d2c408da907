"""A seeded generator of synthetic support chats for Nordwind Shop, a fictional online shop.

It writes the bundled sample corpus: ``chatbot demo`` trains its default model on it, and tests use
it as realistic input. Each record is one conversation in the JSON Lines chat format that
:func:`training.transcripts.readers.read_transcripts` reads, with the intent as an extra key::

    {"id": "sample-0-00000", "intent": "order_status",
     "messages": [{"role": "user", "content": "has my order #48213 shipped yet?"},
                  {"role": "assistant", "content": "Order #48213 has been packed and ..."}]}

Example::

    from training.demo.corpus import INTENTS, generate_conversations, write_sample

    train = generate_conversations(2000, seed=0)
    held_out = generate_conversations(300, seed=1)  # another seed: held-out data, same distribution
    assert {c["intent"] for c in train} == set(INTENTS)
    path = write_sample("sample.jsonl", n=2000, seed=0)

or ``python -m training.demo.corpus sample.jsonl --conversations 2000 --seed 0``.

The tables (the catalogue, names and places, the intents' request templates and reply variants)
are data, in ``corpus.json`` beside this file; a branch's ``pools`` name the values a slot is
narrowed to (another table, or the products of some kinds or of one fit). This module is the
generator: seeded choices over those tables.

How the corpus is built, so a tiny GPT-2 can learn it and beats nearest-neighbour retrieval:

- **Agents are consistent**: each intent has two or three reply variants, the first one the most
  common (see :data:`VARIANT_WEIGHTS`), 10 to 40 words each.
- **Agents echo the customer's values**: order numbers (``#48213``, ``A-10293``), products,
  sizes, colours, amounts, dates, countries, cities, discount codes and first names. When the
  customer leaves out the order number (or the country), the agent asks for it and confirms with
  it in the next turn; a retrieved reply carries someone else's values.
- **Customers vary**: many phrasings per intent, greetings, names and sign-offs, lower case,
  missing final punctuation and a common typo in some turns (:data:`MISSPELLINGS`, swapped,
  dropped or doubled letters). Slot values are never misspelt, so they can be copied.
- **No personal data** unless asked for: ``pii_rate`` is the share of conversations in which one
  customer turn gets a fake e-mail address (``@example.com``) or a fictional phone number
  (``+44 7700 900...``, ``+1 202 555 01..``), so the redaction step has something to find. The
  agent never repeats them. They come from their own random stream: with the same seed, a corpus
  with ``pii_rate=1.0`` is the corpus with ``pii_rate=0.0`` plus one sentence per conversation.

A conversation has one to four customer turns (an optional greeting, the request, an optional
answer to the agent's question, an optional thank-you), each answered by the agent, and may
start with the agent's greeting. Everything is drawn from ``random.Random(seed)``: the same
arguments give the same corpus, on every platform and Python version this package supports.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # importing the chatbot package loads the engine: 1 s the CLI does not need
    from chatbot.types import Role

SHOP = "Nordwind Shop"
# The corpus's tables (catalogue, names, the intents' templates and replies) are data, beside this
# file; this module is the generator that draws from them.
TABLES_FILE = Path(__file__).with_name("corpus.json")
TABLES: dict[str, Any] = json.loads(TABLES_FILE.read_text(encoding="utf-8"))


def _strings(table: str) -> tuple[str, ...]:
    """A table of strings from :data:`TABLES`."""
    return tuple(TABLES[table])


DEFAULT_CONVERSATIONS = 2000  # the size of the demo corpus
FILE_MODE = 0o644  # a written sample is as readable as any other file

# How often each variant of an agent reply is chosen, by position: the first variant is the
# house style, the others are colleagues' wordings.
VARIANT_WEIGHTS = (6, 3, 1)

# Per customer turn: the share written in lower case, without final punctuation, with typos.
LOWER_CASE_RATE = 0.3
NO_FINAL_PUNCTUATION_RATE = 0.3
TYPO_RATE = 0.15

# Per conversation: how it opens, whether the customer gives a name, whether they say thanks.
AGENT_FIRST_RATE = 0.25  # the agent greets first
OPENER_RATE = 0.2  # the customer sends a greeting on its own before the request
INLINE_GREETING_RATE = 0.35  # the request starts with "hi,"
NAME_RATE = 0.25
CLOSER_RATE = 0.45
POLITE_SUFFIX_RATE = 0.2

# Common misspellings and chat shorthand customers type; a typo picks one of these when it can.
MISSPELLINGS: dict[str, str] = dict(TABLES["misspellings"])
_MISSPELLINGS_LOWER = {word.lower(): typo for word, typo in MISSPELLINGS.items()}


class Message(TypedDict):
    """One turn: ``user`` is the customer, ``assistant`` the agent."""

    role: Role
    content: str


class Conversation(TypedDict):
    """One record of the corpus, as written to a line of the JSONL file."""

    id: str  # "sample-<seed>-<index>"
    intent: str  # one of INTENTS
    messages: list[Message]


# ---------------------------------------------------------------------------------------------
# The shop: its products, and the values customers mention.


@dataclass(frozen=True)
class Product:
    """One product of the catalogue: its kind (which sizes), how it fits, and its specification."""

    name: str
    kind: str  # "clothing" (XS-XL), "shoes" (EU 37-46), "electronics" or "home" (no sizes)
    fit: str  # "true", "small" or "large" for clothing and shoes; "" otherwise
    spec: str  # completes "The <name> ...": what the agent says about it


CATALOGUE: tuple[Product, ...] = tuple(Product(**product) for product in TABLES["catalogue"])
PRODUCTS = {product.name: product for product in CATALOGUE}
WEARABLE = tuple(p.name for p in CATALOGUE if p.kind in ("clothing", "shoes"))
SIZES = {"clothing": ("XS", "S", "M", "L", "XL"), "shoes": tuple(str(eu) for eu in range(37, 47))}

COLOURS: tuple[str, ...] = _strings("colours")
NAMES: tuple[str, ...] = _strings("names")
SURNAMES: tuple[str, ...] = _strings("surnames")
CITIES: tuple[str, ...] = _strings("cities")
EU_COUNTRIES: tuple[str, ...] = _strings("eu_countries")
FAR_COUNTRIES: tuple[str, ...] = _strings("far_countries")
UNSHIPPED_COUNTRIES: tuple[str, ...] = _strings("unshipped_countries")
ACCEPTED_METHODS: tuple[str, ...] = _strings("accepted_methods")
REFUSED_METHODS: tuple[str, ...] = _strings("refused_methods")
CODE_WORDS: tuple[str, ...] = _strings("code_words")
MONTHS: tuple[str, ...] = _strings("months")


# ---------------------------------------------------------------------------------------------
# Intents: what customers write, what the agent answers.


@dataclass(frozen=True)
class Branch:
    """One way an intent goes: the customer's templates and the agent's reply variants.

    Templates use ``{slot}`` fields (see :func:`_slots`). ``pools`` narrows a slot's values for
    this branch (only wearable products for a size exchange). When ``ask`` is given and a
    request template lacks ``{asks_for}``, the agent first asks one of ``ask`` and the customer
    answers with the value. ``sorry`` opens the reply when the agent answers straight away.
    """

    requests: tuple[str, ...]
    replies: tuple[str, ...]
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ask: tuple[str, ...] = ()
    asks_for: str = "order"
    sorry: str = ""


@dataclass(frozen=True)
class Intent:
    """An intent: its branches (drawn uniformly), how common it is, and whether it stands alone.

    A standalone intent (a greeting, a thank-you) gets no greeting before it and no thank-you after.
    """

    name: str
    branches: tuple[Branch, ...]
    weight: int = 1
    standalone: bool = False


ASK_ORDER: tuple[str, ...] = _strings("ask_order")

GREETINGS: tuple[str, ...] = _strings("greetings")
NAMED_GREETINGS: tuple[str, ...] = _strings("named_greetings")
GREETING_REPLIES: tuple[str, ...] = _strings("greeting_replies")
NAMED_GREETING_REPLIES: tuple[str, ...] = _strings("named_greeting_replies")


def _intent(record: Mapping[str, Any]) -> Intent:
    """An intent as the tables write it; a branch's pools name the values they narrow a slot to."""
    branches = tuple(
        Branch(
            requests=tuple(branch["requests"]),
            replies=tuple(branch["replies"]),
            pools={slot: _pool(spec) for slot, spec in branch.get("pools", {}).items()},
            ask=tuple(branch.get("ask", ())),
            asks_for=branch.get("asks_for", "order"),
            sorry=branch.get("sorry", ""),
        )
        for branch in record["branches"]
    )
    return Intent(record["name"], branches, record.get("weight", 1), record.get("standalone", False))


def _pool(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """``{"table": NAME}``: a table's strings; ``{"catalogue": {"kind": [...]}}`` or ``{"fit": F}``:
    the names of the products of those kinds, or of that fit, in catalogue order."""
    if "table" in spec:
        return _strings(spec["table"])
    wanted = spec["catalogue"]
    kinds, fit = wanted.get("kind"), wanted.get("fit")
    return tuple(
        p.name for p in CATALOGUE if (kinds is None or p.kind in kinds) and (fit is None or p.fit == fit)
    )


INTENT_TABLE: tuple[Intent, ...] = tuple(_intent(intent) for intent in TABLES["intents"])

INTENTS: tuple[str, ...] = tuple(intent.name for intent in INTENT_TABLE)
_BY_NAME = {intent.name: intent for intent in INTENT_TABLE}


# ---------------------------------------------------------------------------------------------
# The turns around the request: openings, names, answers to the agent's question, thank-yous.

AGENT_GREETINGS: tuple[str, ...] = _strings("agent_greetings")
GREETING_WORDS: tuple[str, ...] = _strings("greeting_words")
GREETING_SEPARATORS: tuple[str, ...] = _strings("greeting_separators")
INTRODUCTIONS: tuple[str, ...] = _strings("introductions")
SIGN_OFFS: tuple[str, ...] = _strings("sign_offs")
POLITE_SUFFIXES: tuple[str, ...] = _strings("polite_suffixes")

NAMED_PREFIXES: tuple[str, ...] = _strings("named_prefixes")
GREETED_PREFIXES: tuple[str, ...] = _strings("greeted_prefixes")
ANSWERED_PREFIXES: tuple[str, ...] = _strings("answered_prefixes")

ANSWERS: dict[str, tuple[str, ...]] = {slot: tuple(v) for slot, v in TABLES["answers"].items()}

CLOSERS: tuple[str, ...] = _strings("closers")
CLOSER_REPLIES: tuple[str, ...] = _strings("closer_replies")
NAMED_CLOSER_REPLIES: tuple[str, ...] = _strings("named_closer_replies")

# Fake personal data for ``pii_rate``: reserved example domains, fictional phone ranges.
PII_SENTENCES: tuple[str, ...] = _strings("pii_sentences")

# A word a typo may change: letters only, not part of a ``{slot}`` field.
_WORD = re.compile(r"(?<![{\w])[A-Za-z']+(?![}\w])")


# ---------------------------------------------------------------------------------------------
# Public API.


def generate_conversations(n: int, *, seed: int = 0, pii_rate: float = 0.0) -> list[Conversation]:
    """``n`` synthetic support conversations, the same ones for the same arguments.

    ``seed`` seeds the one ``random.Random`` they are drawn from (use another seed for held-out
    data); ``pii_rate`` (0 to 1) is the share of conversations with a fake e-mail address or
    phone number in a customer turn. With ``n >= len(INTENTS)`` every intent occurs; beyond that,
    common intents (order status, returns, refunds...) occur up to three times as often as rare
    ones. Each record is ``{"id", "intent", "messages": [{"role", "content"}, ...]}``.
    """
    _check_options(n=n, pii_rate=pii_rate)
    rng, pii_rng = random.Random(seed), random.Random(f"pii-{seed}")
    conversations: list[Conversation] = []
    for index, name in enumerate(_schedule(rng, n)):
        messages = _conversation(rng, _BY_NAME[name])
        if pii_rng.random() < pii_rate:
            _add_pii(pii_rng, messages)
        conversations.append({"id": f"sample-{seed}-{index:05d}", "intent": name, "messages": messages})
    return conversations


def write_sample(
    path: str | os.PathLike[str], *, n: int = DEFAULT_CONVERSATIONS, seed: int = 0, pii_rate: float = 0.0
) -> Path:
    """Write :func:`generate_conversations` as JSON Lines to ``path`` atomically; return the path.

    The file appears complete or not at all (a temporary file in the same folder, then
    :func:`os.replace`); a missing parent folder is created.
    """
    return write_jsonl(path, generate_conversations(n, seed=seed, pii_rate=pii_rate))


def write_jsonl(path: str | os.PathLike[str], conversations: Sequence[Conversation]) -> Path:
    """Write ``conversations``, one JSON object a line, to ``path`` atomically; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations)
    from chatbot.paths import write_text_atomically  # here: the chatbot package is slow to import

    write_text_atomically(target, text, mode=FILE_MODE)
    return target


def summary(conversations: Sequence[Conversation]) -> str:
    """One line: conversations, intents, and customer and agent turns (how many distinct)."""
    turns: dict[str, list[str]] = {"system": [], "user": [], "assistant": []}
    for conversation in conversations:
        for message in conversation["messages"]:
            turns[message["role"]].append(message["content"])
    intents = len({conversation["intent"] for conversation in conversations})
    customer, agent = turns["user"], turns["assistant"]
    return (
        f"{len(conversations)} conversations, {intents} intents, {len(customer)} customer turns "
        f"({len(set(customer))} distinct), {len(agent)} agent turns ({len(set(agent))} distinct)"
    )


def _check_options(*, n: int, pii_rate: float) -> None:
    """Refuse a count or a rate that cannot be meant."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a whole number >= 0, not {n!r}")
    if not 0.0 <= pii_rate <= 1.0:  # also refuses NaN
        raise ValueError(f"pii_rate must be between 0 and 1, not {pii_rate!r}")


# ---------------------------------------------------------------------------------------------
# One conversation.


def _schedule(rng: random.Random, n: int) -> list[str]:
    """The intent of each conversation: every intent once (when ``n`` allows), then by weight."""
    first = list(INTENTS) if n >= len(INTENTS) else []
    weights = [intent.weight for intent in INTENT_TABLE]
    names = first + rng.choices(INTENTS, weights=weights, k=n - len(first))
    rng.shuffle(names)
    return names


@dataclass
class _Chat:
    """A conversation being written: its slot values and messages so far."""

    rng: random.Random
    slots: dict[str, str]
    messages: list[Message] = field(default_factory=list)
    named: bool = False  # whether the customer has told us their name

    def customer(self, template: str) -> None:
        """Add a customer turn: ``template`` in a random style, then filled."""
        self.messages.append({"role": "user", "content": _style(self.rng, template).format_map(self.slots)})

    def agent(self, template: str) -> None:
        """Add an agent turn: ``template`` filled."""
        self.messages.append({"role": "assistant", "content": template.format_map(self.slots)})


def _conversation(rng: random.Random, intent: Intent) -> list[Message]:
    """The messages of one conversation of ``intent``."""
    branch = rng.choice(intent.branches)
    chat = _Chat(rng, _slots(rng, branch.pools))
    if intent.standalone:
        chat.customer(rng.choice(branch.requests))
        chat.agent(_variant(rng, branch.replies))
        return chat.messages
    greeted = _open(chat)
    _request(chat, branch, greeted=greeted)
    if rng.random() < CLOSER_RATE:
        chat.customer(rng.choice(CLOSERS))
        chat.agent(_variant(rng, NAMED_CLOSER_REPLIES if chat.named else CLOSER_REPLIES))
    return chat.messages


def _open(chat: _Chat) -> bool:
    """Maybe an agent greeting, or a customer greeting and its reply; whether the customer greeted."""
    roll = chat.rng.random()
    if roll < AGENT_FIRST_RATE:
        chat.agent(_variant(chat.rng, AGENT_GREETINGS))
        return False
    if roll >= AGENT_FIRST_RATE + OPENER_RATE:
        return False
    chat.named = chat.rng.random() < NAME_RATE
    greetings, replies = (
        (NAMED_GREETINGS, NAMED_GREETING_REPLIES) if chat.named else (GREETINGS, GREETING_REPLIES)
    )
    chat.customer(chat.rng.choice(greetings))
    chat.agent(_variant(chat.rng, replies))
    return True


def _request(chat: _Chat, branch: Branch, *, greeted: bool) -> None:
    """The customer's request and the agent's answer, with a question and its answer if needed."""
    rng = chat.rng
    template = rng.choice(branch.requests)
    greet = not greeted and rng.random() < INLINE_GREETING_RATE
    introduce = not greeted and rng.random() < NAME_RATE
    chat.customer(_compose(rng, template, greet=greet, introduce=introduce))
    chat.named = chat.named or introduce
    reply = _variant(rng, branch.replies)
    if branch.ask and "{" + branch.asks_for + "}" not in template:
        chat.agent(_prefix(rng, greet=greet, introduce=introduce) + _variant(rng, branch.ask))
        chat.customer(rng.choice(ANSWERS[branch.asks_for]))
        chat.agent(_variant(rng, ANSWERED_PREFIXES) + reply)
    else:
        chat.agent(_prefix(rng, greet=greet, introduce=introduce) + branch.sorry + reply)


def _compose(rng: random.Random, template: str, *, greet: bool, introduce: bool) -> str:
    """The request template with a greeting, the customer's name or a polite ending around it."""
    if introduce and rng.random() < 0.6:
        return rng.choice(INTRODUCTIONS) + _lower_first(template)
    head = ""
    if greet:
        separator = rng.choice(GREETING_SEPARATORS)
        head = rng.choice(GREETING_WORDS) + separator
        template = template if separator in ("! ", ". ") else _lower_first(template)
    if introduce:
        return head + template + rng.choice(SIGN_OFFS)
    tail = rng.choice(POLITE_SUFFIXES) if rng.random() < POLITE_SUFFIX_RATE else ""
    return head + template + tail


def _prefix(rng: random.Random, *, greet: bool, introduce: bool) -> str:
    """How the agent opens the first answer: the customer's name, a greeting back, or nothing."""
    if introduce:
        return _variant(rng, NAMED_PREFIXES)
    return _variant(rng, GREETED_PREFIXES) if greet else ""


def _lower_first(text: str) -> str:
    """``text`` with a lower-case first letter, unless it starts with "I" or a slot."""
    if text.startswith(("I ", "I'", "{")):
        return text
    return text[:1].lower() + text[1:]


def _variant(rng: random.Random, options: Sequence[str]) -> str:
    """One of ``options``, the earlier ones more often (:data:`VARIANT_WEIGHTS`)."""
    return rng.choices(options, weights=VARIANT_WEIGHTS[: len(options)])[0]


# ---------------------------------------------------------------------------------------------
# Slot values.


def _slots(rng: random.Random, pools: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Every slot value a conversation may use; ``pools`` narrows some of them."""
    product = rng.choice(pools.get("product", tuple(PRODUCTS)))
    colour, other_colour = rng.sample(COLOURS, 2)
    return {
        "name": rng.choice(NAMES),
        "order": _order_number(rng),
        "product": product,
        "other_product": rng.choice([name for name in PRODUCTS if name != product]),
        "size": rng.choice(SIZES.get(PRODUCTS[product].kind, ("one size",))),
        "spec": PRODUCTS[product].spec,
        "colour": colour,
        "other_colour": other_colour,
        "amount": f"€{rng.randint(12, 249)}.{rng.choice(('99', '95', '90', '50', '00'))}",
        "date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)}",
        "country": rng.choice(pools.get("country", EU_COUNTRIES)),
        "city": rng.choice(CITIES),
        "code": f"{rng.choice(CODE_WORDS)}{rng.choice((10, 15, 20, 25, 30))}",
        "method": rng.choice(pools.get("method", ACCEPTED_METHODS)),
    }


def _order_number(rng: random.Random) -> str:
    """An order number as the shop prints it: ``#48213`` or ``A-10293``."""
    digits = rng.randint(10000, 99999)
    return f"#{digits}" if rng.random() < 0.5 else f"A-{digits}"


# ---------------------------------------------------------------------------------------------
# How customers write.


def _style(rng: random.Random, template: str) -> str:
    """A customer template as someone might type it: lower case, no final stop, a typo or two.

    It works on the template, before the slots are filled, so values are never changed.
    """
    if rng.random() < LOWER_CASE_RATE:
        template = template.lower()  # {slot} fields are lower case already
    if rng.random() < NO_FINAL_PUNCTUATION_RATE:
        template = template.rstrip(".!?")
    if rng.random() < TYPO_RATE:
        for _ in range(rng.choice((1, 1, 2))):
            template = _typo(rng, template)
    return template


def _typo(rng: random.Random, text: str) -> str:
    """``text`` with one word misspelt: a common misspelling when it has one, else a slip."""
    words = [
        m for m in _WORD.finditer(text) if m.group().lower() in _MISSPELLINGS_LOWER or len(m.group()) >= 4
    ]
    if not words:
        return text
    match = rng.choice(words)
    word = match.group()
    known = _MISSPELLINGS_LOWER.get(word.lower())
    typo = _same_case(word, known) if known and rng.random() < 0.8 else _slip(rng, word)
    return text[: match.start()] + typo + text[match.end() :]


def _same_case(word: str, typo: str) -> str:
    """``typo`` capitalised like ``word``."""
    return typo[:1].upper() + typo[1:] if word[:1].isupper() else typo


def _slip(rng: random.Random, word: str) -> str:
    """A slip of the fingers: two letters swapped, one dropped or one doubled (never the first)."""
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


# ---------------------------------------------------------------------------------------------
# Fake personal data.


def _add_pii(rng: random.Random, messages: list[Message]) -> None:
    """Append a fake e-mail address or phone number to one customer turn."""
    turns = [message for message in messages if message["role"] == "user"]
    turn = rng.choice(turns)
    name = rng.choice(NAMES)
    local = re.sub(r"[^a-z]", "", name.lower()) + "." + rng.choice(SURNAMES).lower()
    values = {
        "email": f"{local}@example.{rng.choice(('com', 'org', 'net'))}",
        "phone": rng.choice(
            (f"+44 7700 900{rng.randint(0, 999):03d}", f"+1 202 555 01{rng.randint(0, 99):02d}")
        ),
    }
    turn["content"] += rng.choice(PII_SENTENCES).format_map(values)


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.demo.corpus OUT.jsonl``: write a sample corpus; 0 done, 1 error, 2 usage."""
    parser = argparse.ArgumentParser(
        prog="python -m training.demo.corpus",
        description=f"Write a synthetic support corpus of {SHOP} (a fictional shop) as JSON Lines.",
        epilog="Held-out data: the same command with another --seed.",
    )
    parser.add_argument("out", type=Path, help="the JSONL file to write (its folder is created)")
    parser.add_argument(
        "--conversations", type=int, default=DEFAULT_CONVERSATIONS, help="how many (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same file")
    parser.add_argument(
        "--pii-rate", type=float, default=0.0, help="share of conversations with fake PII (0-1)"
    )
    args = parser.parse_args(argv)
    try:
        conversations = generate_conversations(args.conversations, seed=args.seed, pii_rate=args.pii_rate)
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        path = write_jsonl(args.out, conversations)
    except OSError as error:
        print(f"error: cannot write {args.out}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"wrote {path}: {summary(conversations)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
