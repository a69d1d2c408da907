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
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:  # importing the chatbot package loads the engine: 1 s the CLI does not need
    from chatbot.types import Role

SHOP = "Nordwind Shop"
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
MISSPELLINGS: dict[str, str] = {
    "receive": "recieve",
    "received": "recieved",
    "address": "adress",
    "please": "pls",
    "thanks": "thx",
    "you": "u",
    "your": "ur",
    "because": "becuase",
    "definitely": "definately",
    "package": "pakage",
    "delivery": "delivary",
    "tomorrow": "tommorow",
    "which": "wich",
    "order": "oder",
    "account": "acount",
    "password": "pasword",
    "already": "allready",
    "arrived": "arived",
    "still": "stil",
    "really": "realy",
    "can't": "cant",
    "don't": "dont",
    "didn't": "didnt",
    "I'm": "im",
    "what's": "whats",
    "refund": "refnd",
    "wrong": "wrng",
    "colour": "color",
}
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


CATALOGUE: tuple[Product, ...] = (
    Product(
        "Alpine Rain Jacket", "clothing", "small",
        "is made of recycled polyester, is fully waterproof and can be machine-washed at 30 degrees",
    ),
    Product(
        "Linen Summer Shirt", "clothing", "true",
        "is made of 100% European linen and can be machine-washed at 40 degrees",
    ),
    Product(
        "Merino Crew Sweater", "clothing", "true",
        "is made of fine merino wool and should be washed by hand or on the wool cycle",
    ),
    Product(
        "Classic Denim Jeans", "clothing", "large",
        "are made of organic cotton denim with a little stretch and can be machine-washed at 30 degrees",
    ),
    Product(
        "Fleece Zip Hoodie", "clothing", "true",
        "is made of soft recycled fleece and can be machine-washed at 30 degrees",
    ),
    Product(
        "Organic Cotton Tee", "clothing", "small",
        "is made of 100% organic cotton and can be machine-washed at 40 degrees",
    ),
    Product(
        "Wool Blend Coat", "clothing", "large",
        "is made of 70% wool and 30% polyamide and should be dry-cleaned",
    ),
    Product(
        "Trail Running Shorts", "clothing", "true",
        "are made of light quick-dry nylon with a zip pocket and can be machine-washed at 30 degrees",
    ),
    Product(
        "Trail Runner Sneakers", "shoes", "small",
        "have a breathable mesh upper and a grippy rubber sole, and the insoles can be taken out",
    ),
    Product(
        "Leather Chelsea Boots", "shoes", "true",
        "are made of full-grain leather with a rubber sole and are lined with cotton",
    ),
    Product(
        "Canvas Low Tops", "shoes", "large",
        "are made of organic cotton canvas with a natural rubber sole and can be hand-washed",
    ),
    Product(
        "Summit Hiking Boots", "shoes", "true",
        "have a waterproof membrane, a suede and nylon upper and a Vibram sole",
    ),
    Product(
        "Aurora Wireless Headphones", "electronics", "",
        "have up to 30 hours of battery life, active noise cancelling, Bluetooth 5.3 and USB-C charging",
    ),
    Product(
        "Pulse Fitness Watch", "electronics", "",
        "has up to 7 days of battery life, GPS and a heart-rate sensor, and is waterproof to 50 metres",
    ),
    Product(
        "Echo Mini Speaker", "electronics", "",
        "has up to 12 hours of battery life, Bluetooth 5.0 and is splash-proof",
    ),
    Product(
        "Nova Power Bank", "electronics", "",
        "holds 10,000 mAh, charges two devices at once and charges itself over USB-C in about 3 hours",
    ),
    Product(
        "Orbit Earbuds", "electronics", "",
        "have up to 8 hours of battery life, 24 more with the case, and are sweat-proof",
    ),
    Product(
        "Lumen Desk Lamp", "home", "",
        "is 45 cm tall, made of powder-coated steel and has three brightness levels",
    ),
    Product(
        "Ceramic Mug Set", "home", "",
        "holds four 350 ml stoneware mugs that are dishwasher and microwave safe",
    ),
    Product(
        "Bamboo Cutting Board", "home", "",
        "measures 40 x 25 cm, is made of solid bamboo and should be washed by hand",
    ),
    Product(
        "Linen Duvet Cover", "home", "",
        (
            "is made of stonewashed European linen, measures 200 x 200 cm and can be machine-washed at 40 "
            "degrees"
        ),
    ),
    Product(
        "Cast Iron Skillet", "home", "",
        "is 26 cm wide, comes pre-seasoned and works on every hob, induction included",
    ),
)  # fmt: skip
PRODUCTS = {product.name: product for product in CATALOGUE}
WEARABLE = tuple(p.name for p in CATALOGUE if p.kind in ("clothing", "shoes"))
SIZES = {"clothing": ("XS", "S", "M", "L", "XL"), "shoes": tuple(str(eu) for eu in range(37, 47))}

COLOURS = (
    "black", "navy", "olive green", "sand", "burgundy", "grey", "white", "forest green", "sky blue",
    "charcoal",
)  # fmt: skip
NAMES = (
    "Anna", "Tom", "Sofia", "Lukas", "Emma", "Noah", "Mia", "Liam", "Lea", "Jonas", "Clara", "Finn",
    "Hannah", "Ben", "Julia", "Elias", "Marie", "Paul", "Sara", "David", "Laura", "Felix", "Nina",
    "Oscar", "Eva", "Matteo", "Ines", "Jakob", "Chloe", "Omar", "Aisha", "Pieter", "Zoë", "Søren",
    "José", "Ingrid", "Karim", "Maja", "Hugo", "Priya",
)  # fmt: skip
SURNAMES = ("Berg", "Novak", "Jansen", "Moreau", "Rossi", "Keller", "Lund", "Costa", "Weber", "Dubois")
CITIES = (
    "Hamburg", "Lyon", "Utrecht", "Graz", "Porto", "Malmö", "Ghent", "Bologna", "Cork", "Aarhus",
    "Kraków", "Tampere", "Seville", "Leipzig", "Nantes", "Salzburg", "Rotterdam", "Turin", "Bern",
    "Bergen",
)  # fmt: skip
EU_COUNTRIES = (
    "Germany", "Austria", "France", "the Netherlands", "Belgium", "Spain", "Italy", "Ireland",
    "Denmark", "Sweden", "Poland", "Portugal", "Finland", "Luxembourg", "Czechia",
)  # fmt: skip
FAR_COUNTRIES = ("the UK", "Switzerland", "Norway")
UNSHIPPED_COUNTRIES = (
    "the US", "Canada", "Australia", "Japan", "Brazil", "India", "Mexico", "Turkey", "Singapore",
)  # fmt: skip
ACCEPTED_METHODS = ("PayPal", "Apple Pay", "Google Pay", "Klarna", "Visa", "Mastercard", "bank transfer")
REFUSED_METHODS = ("cash on delivery", "Bitcoin", "American Express", "Diners Club", "Alipay")
CODE_WORDS = ("SPRING", "SUMMER", "AUTUMN", "WINTER", "WELCOME", "HELLO", "FRIENDS", "NORD", "SALE", "VIP")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)  # fmt: skip


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


ASK_ORDER = ("Of course! Could you give me your order number?", "Sure, what's your order number?")

GREETINGS = (
    "hi", "Hello", "hey there", "Good morning!", "hi, anyone there?", "Hello?", "hiya", "Good afternoon",
    "Hi there :)", "hello!",
)  # fmt: skip
NAMED_GREETINGS = (
    "Hi, I'm {name}", "hello, this is {name}", "Hi there, {name} here", "Good morning, my name is {name}",
    "hey it's {name}",
)  # fmt: skip
GREETING_REPLIES = (
    f"Hello! Welcome to {SHOP}. How can I help you today?",
    "Hi there! How can I help you today?",
)
NAMED_GREETING_REPLIES = (
    "Hi {name}! Welcome to " + SHOP + ". How can I help you today?",
    "Hello {name}! How can I help you today?",
)

INTENT_TABLE: tuple[Intent, ...] = (
    Intent("order_status", weight=3, branches=(Branch(
        requests=(
            "What's the status of my order {order}?",
            "Can you tell me the status of order {order}",
            "has my order {order} shipped yet?",
            "I placed an order last week and haven't heard anything. Order number {order}.",
            "I'd like to know if order {order} has been sent",
            "any update on {order}?",
            "Is my order {order} already on its way?",
            "I ordered on {date} and want to know the status, order {order}",
            "What's the status of my order?",
            "Has my order shipped yet?",
            "I'd like to check on my order please",
            "when will my order be sent out?",
            "I placed an order a few days ago, has it been dispatched?",
            "can you check my order status",
            "Could you please tell me whether my order has been processed?",
            "order status?",
        ),
        replies=(
            (
                "Order {order} has been packed and will be handed to the courier within 24 hours. You'll get "
                "an email with the tracking link as soon as it ships."
            ),
            (
                "Your order {order} is being prepared in our warehouse and will ship within 24 hours. We'll "
                "email you the tracking link."
            ),
        ),
        ask=(
            "Of course! Could you give me your order number?",
            "Sure, what's your order number?",
            "Happy to check. Could you tell me your order number?",
        ),
    ),)),
    Intent("track_order", weight=3, branches=(Branch(
        requests=(
            "Where is my order {order}?",
            "where's my parcel?? order {order}",
            "I need the tracking number for order {order}",
            "The tracking link for {order} doesn't work",
            "can you track my package {order}",
            "How do I track order {order}?",
            "Where is my order?",
            "where is my package",
            "I can't find my tracking number",
            "How can I track my parcel?",
            "I never got a tracking link",
            "Where's my stuff? I ordered days ago",
            "can you tell me where my parcel is",
            "Could you please let me know where my delivery is right now?",
        ),
        replies=(
            (
                "Order {order} is with the courier and on its way to you. You can follow it with the "
                "tracking link in your shipping confirmation email."
            ),
            (
                "Order {order} left our warehouse and is on its way. The tracking link is in your shipping "
                "confirmation email."
            ),
        ),
        ask=(
            "Let me check that for you. What's your order number?",
            "Sure! Could you give me your order number?",
        ),
    ),)),
    Intent("delivery_delay", weight=3, branches=(
        Branch(
            requests=(
                "My order {order} should have arrived on {date} and it's still not here",
                "Order {order} was supposed to come on {date}, what's going on?",
                "I was promised delivery by {date} but nothing has arrived. Order {order}",
                "still waiting for {order}, expected it on {date}",
                "My parcel was meant to arrive on {date} but it hasn't come yet",
                "I expected my delivery on {date} and it still isn't here",
                "why is my order late? it was due on {date}",
                "The website said {date} and I still don't have my package",
            ),
            replies=(
                (
                    "Order {order} was due on {date}, but our courier has a delay in your area. It should "
                    "reach you within 3 working days."
                ),
                (
                    "I can see order {order} missed its {date} delivery date because of a courier delay. It "
                    "should arrive within 3 working days."
                ),
            ),
            ask=(
                "I'm sorry about the wait! Could you give me your order number?",
                "Sorry for the delay! What's your order number?",
            ),
            sorry="I'm sorry for the delay! ",
        ),
        Branch(
            requests=(
                "my order {order} is late",
                "Order {order} is taking forever",
                "my delivery is delayed, order {order}",
                "It's been two weeks and order {order} still hasn't arrived",
                "My order is late",
                "why is my delivery taking so long?",
                "my parcel still hasn't arrived",
                "it's been over a week and still no package",
                "My order is delayed again!!",
                "Why hasn't my order arrived yet? It's been ages",
            ),
            replies=(
                (
                    "Order {order} is delayed at our courier and should reach you within 3 working days. If "
                    "it hasn't arrived by then, we'll send a replacement or refund you in full."
                ),
                (
                    "Our courier is running late with order {order}; it should arrive within 3 working days. "
                    "If it doesn't, we'll refund you in full."
                ),
            ),
            ask=(
                "I'm sorry about the wait! Could you give me your order number?",
                "Sorry for the delay! What's your order number?",
            ),
            sorry="I'm sorry for the delay! ",
        ),
    )),
    Intent("change_address", weight=2, branches=(Branch(
        requests=(
            "I need to change the delivery address for order {order}, I've moved to {city}",
            "Can you send order {order} to my new address in {city} instead?",
            "please update the shipping address on {order} to my office in {city}",
            "I moved to {city}, can I change the address on my order {order}?",
            "Can I change my delivery address? I've just moved to {city}",
            "I entered the wrong address, it should go to my new place in {city}",
            "Is it possible to ship my order to {city} instead of my home address?",
            "i need my parcel delivered to my new flat in {city}",
            "Could you change the address of my order? We moved to {city} last week",
            "wrong address on my order, I live in {city} now",
        ),
        replies=(
            (
                "I've changed the delivery address of order {order} to your new address in {city}. You'll "
                "get a confirmation email shortly."
            ),
            "Order {order} will now be delivered to your new address in {city}.",
        ),
        ask=(
            "No problem! What's the order number?",
            "Sure, I can help with that. Could you give me your order number?",
        ),
    ),)),
    Intent("cancel_order", weight=2, branches=(Branch(
        requests=(
            "Please cancel my order {order}",
            "I want to cancel order {order}",
            "can I still cancel {order}? I ordered by mistake",
            "I changed my mind, cancel order {order} please",
            "Could you cancel my order {order}? I found it cheaper elsewhere",
            "cancel {order}",
            "I'd like to cancel my order",
            "How do I cancel an order?",
            "i ordered the wrong thing, can you cancel it",
            "Please cancel my most recent order",
            "Is it too late to cancel my order?",
            "I need to cancel an order I placed this morning",
        ),
        replies=(
            (
                "I've cancelled order {order} for you. If you already paid, the money will be back on your "
                "account within 5 working days."
            ),
            "Order {order} is now cancelled. Any payment will be refunded within 5 working days.",
        ),
        ask=(
            "Sure, I can do that. What's the order number?",
            "Of course. Could you give me the number of the order you'd like to cancel?",
        ),
    ),)),
    Intent("return_item", weight=3, branches=(Branch(
        requests=(
            "I'd like to return the {product} from order {order}",
            "How do I return the {product}? Order {order}",
            "The {product} isn't right for me, I want to send it back. Order number {order}",
            "can i return the {product} i got in order {order}",
            "I want to return my {product}, it's not what I expected. {order}",
            "I want to return the {product} I bought",
            "How can I send back the {product}?",
            "The {product} isn't for me, can I return it?",
            "i would like to return the {product} please",
            "Is it possible to return the {product} after 2 weeks?",
            "I need to return the {product}, it's not what I wanted",
            "Can I send the {product} back for a refund?",
        ),
        replies=(
            (
                "I've registered the return of the {product} from order {order}. You'll get a free return "
                "label by email within the hour; returns are free within 30 days."
            ),
            (
                "The return of your {product} from order {order} is registered. We've emailed you a free "
                "return label."
            ),
        ),
        ask=ASK_ORDER,
    ),)),
    Intent("return_label", branches=(Branch(
        requests=(
            "I didn't get a return label for order {order}",
            "where's the return label for {order}?",
            "The return label for order {order} won't print",
            "Can you send me the return label for order {order} again?",
            "my return label for {order} has expired",
            "I never received the return label",
            "How do I get a return label?",
            "the return label isn't in my email",
            "can you resend my return label please",
            "I lost my return label",
            "The return label doesn't open on my phone",
        ),
        replies=(
            (
                "I've sent a new return label for order {order} to your email. Print it, stick it on the "
                "parcel and drop it off at any post office."
            ),
            (
                "A new return label for order {order} is on its way to your inbox. You can drop the parcel "
                "off at any post office."
            ),
        ),
        ask=(
            "Sorry about that! Could you give me the order number?",
            "Let me send you a new one. What's your order number?",
        ),
    ),)),
    Intent("refund_status", weight=3, branches=(Branch(
        requests=(
            "When will I get my refund for order {order}?",
            "I returned order {order} two weeks ago and still no refund",
            "Has my refund for {order} been processed?",
            "where is my refund?? order {order}",
            "I sent back {order} on {date}, when do I get my money?",
            "When will I get my refund?",
            "I still haven't received my refund",
            "How long does a refund take? I sent my parcel back last week",
            "my refund hasn't come through yet",
            "I returned my items weeks ago and I'm still waiting for the money",
            "Is my refund on its way?",
        ),
        replies=(
            (
                "We've received the return for order {order} and approved your refund. The money should be "
                "on your account within 5 to 7 working days."
            ),
            (
                "Your refund for order {order} has been approved and should reach your account within 5 to 7 "
                "working days."
            ),
        ),
        ask=(
            "Let me check that. What's the order number of your return?",
            "Sure! Could you give me the order number?",
        ),
    ),)),
    Intent("refund_amount", branches=(
        Branch(
            requests=(
                "I only got {amount} back for the {product}, that's not right",
                "Why was my refund for the {product} only {amount}?",
                "The refund for my {product} was {amount}, I paid more than that",
                "you refunded {amount} for the {product} but it cost more",
                "I got {amount} back for my returned {product}. Is that the full amount?",
                "Refund for the {product} is only {amount}?? where is the rest",
            ),
            replies=(
                (
                    "I'm sorry about that! I've asked our finance team to check the {amount} refund for your "
                    "{product}. If anything is missing, we'll send you the difference within 5 working days."
                ),
                (
                    "I've asked our finance team to look into the {amount} refund for the {product}. Any "
                    "missing amount will be paid within 5 working days."
                ),
            ),
        ),
        Branch(
            requests=(
                "Will I get the shipping costs back if I return something?",
                "How much will I get back if I return the {product}?",
                "do you refund the full price?",
                "Is there a fee for returns?",
                "if i return the {product} do i get all my money back",
                "Do I get a full refund or store credit?",
            ),
            replies=(
                (
                    "You'll get the full price of the item back to your original payment method. If you "
                    "return the whole order, we also refund the shipping costs, and returns are free."
                ),
                (
                    "Returns are free and you get the full price back. If you send back the whole order, the "
                    "shipping costs are refunded too."
                ),
            ),
        ),
    )),
    Intent("exchange_item", weight=2, branches=(
        Branch(
            requests=(
                "Can I exchange the {product} for a size {size}?",
                "The {product} is too small, can I swap it for size {size}?",
                "I need the {product} in size {size} instead",
                "i'd like to exchange my {product} for size {size}",
                "Could I get the {product} in size {size}? Mine doesn't fit",
                "I want to exchange the {product} from order {order} for size {size}",
                "order {order}: please swap the {product} for a size {size}",
            ),
            replies=(
                (
                    "I've set up an exchange of your {product} for size {size} (order {order}). Please send "
                    "the original back with the free return label we've emailed you."
                ),
                (
                    "Your {product} from order {order} will be exchanged for size {size}. The free return "
                    "label for the original is in your inbox."
                ),
            ),
            pools={"product": WEARABLE},
            ask=(
                "Sure! What's the order number?",
                "Happy to help with that. Could you give me your order number?",
            ),
        ),
        Branch(
            requests=(
                "Can I exchange the {product} for the {colour} one?",
                "I'd prefer the {product} in {colour}, can I swap it?",
                "is it possible to change the colour of my {product} to {colour}",
                "I want to exchange my {product} for one in {colour}",
                "Can I swap the {product} from order {order} for {colour}?",
                "order {order}, i'd like the {product} in {colour} instead",
            ),
            replies=(
                (
                    "I've set up an exchange of your {product} for the {colour} one (order {order}). Please "
                    "send the original back with the free return label we've emailed you."
                ),
                (
                    "Your {product} from order {order} will be exchanged for the {colour} one. The free "
                    "return label for the original is in your inbox."
                ),
            ),
            ask=(
                "Sure! What's the order number?",
                "Happy to help with that. Could you give me your order number?",
            ),
        ),
    )),
    Intent("damaged_item", weight=2, branches=(Branch(
        requests=(
            "The {product} from order {order} arrived damaged",
            "my {product} came broken. order {order}",
            "order {order} arrived and the {product} is scratched",
            "The box was crushed and the {product} inside is damaged. Order {order}",
            "My {product} arrived broken",
            "the {product} I received is damaged",
            "I just opened the parcel and the {product} is cracked",
            "The {product} arrived damaged, I'm so disappointed",
            "my {product} was damaged in delivery, what now?",
            "Received the {product} today but it's broken :(",
        ),
        replies=(
            (
                "I've arranged a free replacement of the {product} for order {order}. You don't need to send "
                "the damaged one back."
            ),
            (
                "A free replacement {product} for order {order} is on its way. You can keep or recycle the "
                "damaged one."
            ),
        ),
        ask=(
            "I'm so sorry to hear that! Could you give me your order number?",
            "Oh no, I'm sorry! What's the order number?",
        ),
        sorry="I'm so sorry your {product} arrived damaged! ",
    ),)),
    Intent("wrong_item", weight=2, branches=(
        Branch(
            requests=(
                "I ordered the {product} in {colour} but got {other_colour}",
                "Wrong colour! I ordered {colour} and the {product} you sent is {other_colour}",
                "you sent me the {product} in {other_colour} instead of {colour}",
                "Order {order}: the {product} should be {colour}, not {other_colour}",
                "I received the {product} in {other_colour} but ordered {colour}. Order {order}",
            ),
            replies=(
                (
                    "I'm sending the {product} in {colour} for order {order} today, and we've emailed you a "
                    "free return label for the {other_colour} one."
                ),
                (
                    "The {product} in {colour} for order {order} goes out today. Please send the "
                    "{other_colour} one back with the free label in your inbox."
                ),
            ),
            ask=(
                "I'm sorry for the mix-up! Could you give me your order number?",
                "Sorry about that! What's your order number?",
            ),
            sorry="I'm sorry for the mix-up! ",
        ),
        Branch(
            requests=(
                "I ordered the {product} but received the {other_product}",
                "I got the {other_product} instead of my {product}",
                "wrong item!! I ordered the {product}, you sent the {other_product}",
                "There's a {other_product} in my parcel, but I ordered the {product}",
                "Order {order} should contain the {product} but I got the {other_product}",
                "you sent the wrong thing for order {order}: {other_product} instead of the {product}",
            ),
            replies=(
                (
                    "I'm sending the {product} for order {order} today, and we've emailed you a free return "
                    "label for the {other_product}."
                ),
                (
                    "The {product} for order {order} goes out today. Please send the {other_product} back "
                    "with the free label in your inbox."
                ),
            ),
            ask=(
                "I'm sorry for the mix-up! Could you give me your order number?",
                "Sorry about that! What's your order number?",
            ),
            sorry="I'm sorry for the mix-up! ",
        ),
    )),
    Intent("missing_item", weight=2, branches=(Branch(
        requests=(
            "Order {order} arrived but the {product} is missing",
            "my parcel {order} came without the {product}",
            "The {product} wasn't in the box. Order {order}",
            "My parcel arrived but the {product} isn't in it",
            "I only got part of my order, the {product} is missing",
            "the {product} was missing from my delivery",
            "Where is the {product}? it wasn't in my package",
            "Got my order today but no {product} inside",
        ),
        replies=(
            (
                "I've checked order {order}: the {product} was left out by mistake. We'll send it to you "
                "today at no extra cost."
            ),
            "The {product} from order {order} will be sent to you separately today, free of charge.",
        ),
        ask=(
            "I'm sorry about that! What's your order number?",
            "Let me look into it. Could you give me your order number?",
        ),
        sorry="I'm sorry about that! ",
    ),)),
    Intent("payment_failed", weight=2, branches=(
        Branch(
            requests=(
                "My payment of {amount} keeps failing",
                "I tried to pay {amount} but the payment was declined",
                "Checkout fails when I try to pay {amount}",
                "why can't I pay? it's {amount} and it keeps getting rejected",
                "The payment for my basket ({amount}) didn't go through",
            ),
            replies=(
                (
                    "I'm sorry about that! Your payment of {amount} didn't go through, so you haven't been "
                    "charged. Please check your card details or try PayPal or Klarna; your basket is saved."
                ),
                (
                    "The {amount} payment was declined, so nothing was charged. Please try again or use "
                    "PayPal or Klarna; your basket is saved."
                ),
            ),
        ),
        Branch(
            requests=(
                "My payment failed",
                "my card keeps getting declined at checkout",
                "I can't complete my purchase, there's a payment error",
                "Payment isn't working on your website",
                "Why does my payment keep failing?",
                "The checkout says payment unsuccessful",
                "i cant pay with my card",
            ),
            replies=(
                (
                    "I'm sorry about that! Please check that your card details and billing address are "
                    "correct, or try another method such as PayPal or Klarna. Your basket is saved."
                ),
                (
                    "Sorry for the trouble! Please check your card details and billing address, or pay with "
                    "PayPal or Klarna instead. Your basket is saved."
                ),
            ),
        ),
    )),
    Intent("charged_twice", branches=(Branch(
        requests=(
            "I was charged twice for order {order}, {amount} two times!",
            "You took {amount} twice from my account for order {order}",
            "I see two payments of {amount} for {order}",
            "double charge of {amount} on order {order}",
            "I was charged {amount} twice for the same order",
            "Why did you take {amount} from my account two times?",
            "there are two charges of {amount} on my bank statement",
            "I got billed twice, {amount} each",
            "My bank shows {amount} taken twice",
        ),
        replies=(
            (
                "I can see the double payment of {amount} for order {order}. The second charge is only a "
                "reservation and will be released within 3 to 5 working days."
            ),
            (
                "The second {amount} charge for order {order} is a reservation that your bank will release "
                "within 3 to 5 working days."
            ),
        ),
        ask=(
            "I'm sorry about that! Could you give me the order number so I can check?",
            "Let me look into it. What's the order number?",
        ),
        sorry="I'm sorry for the worry! ",
    ),)),
    Intent("payment_methods", branches=(
        Branch(
            requests=(
                "Can I pay with {method}?",
                "do you take {method}",
                "Is {method} accepted?",
                "Is it possible to pay by {method}?",
                "Do you accept {method}?",
                "can i use {method} at checkout",
            ),
            replies=(
                (
                    "Yes, you can pay with {method}! We accept Visa, Mastercard, PayPal, Apple Pay, Google "
                    "Pay, Klarna and bank transfer."
                ),
                (
                    "Yes, {method} works at checkout. We also accept Visa, Mastercard, PayPal, Apple Pay, "
                    "Google Pay, Klarna and bank transfer."
                ),
            ),
        ),
        Branch(
            requests=(
                "Can I pay with {method}?",
                "do you take {method}",
                "Is {method} accepted?",
                "Is it possible to pay by {method}?",
                "Do you accept {method}?",
                "can i use {method} at checkout",
            ),
            replies=(
                (
                    "I'm sorry, we don't accept {method}. You can pay with Visa, Mastercard, PayPal, Apple "
                    "Pay, Google Pay, Klarna or bank transfer."
                ),
                (
                    "Unfortunately {method} isn't possible. We accept Visa, Mastercard, PayPal, Apple Pay, "
                    "Google Pay, Klarna and bank transfer."
                ),
            ),
            pools={"method": REFUSED_METHODS},
        ),
        Branch(
            requests=(
                "What payment methods do you accept?",
                "how can I pay?",
                "Which payment options do you have?",
                "What are the ways to pay on your site?",
                "payment options?",
                "Can I pay later?",
            ),
            replies=(
                (
                    "We accept Visa, Mastercard, PayPal, Apple Pay, Google Pay, Klarna and bank transfer. "
                    "With Klarna you can also pay later."
                ),
                (
                    "You can pay with Visa, Mastercard, PayPal, Apple Pay, Google Pay, Klarna or bank "
                    "transfer; Klarna also lets you pay later."
                ),
            ),
        ),
    )),
    Intent("discount_code", weight=2, branches=(Branch(
        requests=(
            "My discount code {code} isn't working",
            "The code {code} says invalid",
            "why doesn't {code} work?",
            "I tried to use {code} at checkout but nothing happens",
            "{code} is not accepted",
            "your promo code {code} doesn't work!!",
            "Can't apply the voucher {code}",
            "I have the code {code} but the discount isn't applied",
            "The discount {code} from your newsletter gives an error",
        ),
        replies=(
            (
                "I'm sorry about that! {code} is valid on full-price items for orders over €50. If your "
                "basket qualifies and it still fails, I can apply the discount to your order manually."
            ),
            (
                "{code} only works on full-price items and orders over €50. If that's the case for you, let "
                "me know and I'll apply it manually."
            ),
        ),
    ),)),
    Intent("invoice_request", branches=(Branch(
        requests=(
            "I need an invoice for order {order}",
            "Can you send me the invoice for {order}?",
            "please send an invoice for order {order} for my company",
            "Where can I find the invoice for order {order}?",
            "i need a receipt for {order}",
            "Can I get an invoice for my order?",
            "I need the invoice for tax purposes",
            "how do i get a receipt",
            "I didn't get an invoice with my order",
            "Could you email me an invoice?",
        ),
        replies=(
            (
                "I've sent the invoice for order {order} to the email address on your account. You can also "
                "download it any time under My orders."
            ),
            (
                "The invoice for order {order} is on its way to your inbox. It's also available to download "
                "under My orders."
            ),
        ),
        ask=("Of course! Which order number is it for?", "Sure! Could you give me the order number?"),
    ),)),
    Intent("create_account", branches=(Branch(
        requests=(
            "How do I create an account?",
            "I want to sign up",
            "how can I register?",
            "can I make an account on your site",
            "Do I need an account to order?",
            "Where do I register as a new customer?",
            "I'd like to open a customer account",
            "how to sign up??",
            "Is it possible to order without an account?",
        ),
        replies=(
            (
                "You can create an account by clicking Sign up at the top of the page. You can also check "
                "out as a guest and create an account later."
            ),
            (
                "Just click Sign up at the top of any page. An account is optional: you can also check out "
                "as a guest."
            ),
        ),
    ),)),
    Intent("password_reset", weight=2, branches=(Branch(
        requests=(
            "I forgot my password",
            "how do I reset my password?",
            "I can't log in, forgot my password",
            "Can you reset my password?",
            "i dont remember my password",
            "My password isn't working anymore",
            "I need to change my password",
            "locked out of my account, forgot the password",
        ),
        replies=(
            (
                "No problem! Click Forgot password on the login page and we'll email you a reset link. The "
                "link is valid for 24 hours."
            ),
            (
                "Click Forgot password on the login page and we'll send you a reset link by email; it's "
                "valid for 24 hours."
            ),
        ),
    ),)),
    Intent("reset_email_missing", branches=(Branch(
        requests=(
            "I didn't receive the password reset email",
            "The reset link never arrived",
            "I asked for a new password but got no email",
            "still no reset email after an hour",
            "where is the password reset email?",
            "I requested a password reset three times and nothing came",
            "The reset email isn't in my inbox",
        ),
        replies=(
            (
                "I'm sorry about that! The email can take up to 10 minutes, so please also check your spam "
                "folder. If it still hasn't arrived, I can send a new link to the email address on your "
                "account."
            ),
            (
                "Please check your spam folder, as the email can take up to 10 minutes. If it isn't there, "
                "I'll send a new link to the email address on your account."
            ),
        ),
    ),)),
    Intent("change_email", branches=(Branch(
        requests=(
            "How do I change my email address?",
            "I want to update the email on my account",
            "Can I change the email address I use to log in?",
            "i have a new email, how do i update it",
            "Please change the email on my account",
            "my email address has changed, what do I do?",
        ),
        replies=(
            (
                "You can change it under My account, Settings, Email. We'll send a confirmation link to the "
                "new address, and the change takes effect once you click it."
            ),
            (
                "Go to My account, then Settings, then Email. Once you confirm the link we send to the new "
                "address, the change is done."
            ),
        ),
    ),)),
    Intent("delete_account", branches=(Branch(
        requests=(
            "Please delete my account",
            "I want you to delete all my personal data",
            "How do I close my account?",
            "I'd like my account and data removed under GDPR",
            "remove my account please",
            "Delete my customer account and stop sending me emails",
            "What data do you store about me? I want it deleted",
        ),
        replies=(
            (
                "I'm sorry to see you go. I've sent a request to delete your account and personal data; "
                "you'll get a confirmation by email within 30 days."
            ),
            (
                "I've asked our data protection team to delete your account and personal data. You'll get a "
                "confirmation by email within 30 days."
            ),
        ),
    ),)),
    Intent("restock", weight=2, branches=(
        Branch(
            requests=(
                "When will the {product} be back in stock in size {size}?",
                "The {product} is sold out in size {size}, will you restock it?",
                "is the {product} available in size {size}?",
                "Do you have the {product} in size {size}?",
                "any chance the {product} in size {size} comes back?",
                "I need the {product} in size {size} but it says out of stock",
            ),
            replies=(
                (
                    "The {product} in size {size} is sold out right now. Click Notify me on the product page "
                    "and we'll email you as soon as it's back in stock."
                ),
                (
                    "Size {size} of the {product} is sold out at the moment. Use Notify me on the product "
                    "page and we'll email you when it's back."
                ),
            ),
            pools={"product": WEARABLE},
        ),
        Branch(
            requests=(
                "Will the {product} in {colour} be restocked?",
                "When is the {product} in {colour} back?",
                "is the {product} available in {colour}?",
                "I can't order the {product} in {colour}, is it sold out?",
                "Do you still make the {product} in {colour}?",
            ),
            replies=(
                (
                    "The {product} in {colour} is sold out right now. Click Notify me on the product page "
                    "and we'll email you as soon as it's back in stock."
                ),
                (
                    "The {colour} {product} is sold out at the moment. Use Notify me on the product page and "
                    "we'll email you when it's back."
                ),
            ),
        ),
    )),
    Intent("sizing", weight=2, branches=tuple(
        Branch(
            requests=(
                "I usually wear size {size}, what size should I get in the {product}?",
                "Does the {product} run small? I'm normally a size {size}",
                "which size of the {product} should I order? I'm usually {size}",
                "I'm normally size {size}. How does the {product} fit?",
                "is the {product} true to size? I wear {size}",
                "Should I size up in the {product}? I'm a size {size}",
            ),
            replies=replies,
            pools={"product": tuple(p.name for p in CATALOGUE if p.fit == fit)},
        )
        for fit, replies in (
            ("true", (
                "The {product} fits true to size, so we'd recommend your usual size {size}.",
                "Customers find the {product} true to size, so size {size} should fit you well.",
            )),
            ("small", (
                (
                    "The {product} runs a little small, so we'd recommend one size up from your usual size "
                    "{size}."
                ),
                "The {product} is a bit small, so we'd go one size up from your usual {size}.",
            )),
            ("large", (
                (
                    "The {product} runs a little large, so we'd recommend one size down from your usual size "
                    "{size}."
                ),
                "The {product} is a bit roomy, so we'd go one size down from your usual {size}.",
            )),
        )
    )),
    Intent("product_specs", branches=tuple(
        Branch(
            requests=requests,
            replies=("The {product} {spec}.", "Good question! The {product} {spec}."),
            pools={"product": tuple(p.name for p in CATALOGUE if p.kind in kinds)},
        )
        for kinds, requests in (
            (("clothing", "shoes"), (
                "What is the {product} made of?",
                "what material is the {product}",
                "Is the {product} machine washable?",
                "tell me about the material of the {product}",
                "Is the {product} made of natural materials?",
            )),
            (("electronics",), (
                "How long does the battery of the {product} last?",
                "What's the battery life of the {product}?",
                "is the {product} waterproof?",
                "Does the {product} have bluetooth?",
                "tell me more about the {product}",
            )),
            (("home",), (
                "What are the dimensions of the {product}?",
                "Is the {product} dishwasher safe?",
                "how big is the {product}",
                "what's the {product} made of?",
                "Can you tell me more about the {product}?",
            )),
        )
    )),
    Intent("shipping_countries", branches=tuple(
        Branch(
            requests=(
                "Do you ship to {country}?",
                "do you deliver to {country}",
                "Can I order from {country}?",
                "I live in {country}, can you send there?",
                "Is delivery to {country} possible?",
                "Do you offer shipping to {country}",
                "can you ship my order to {country}?",
            ),
            replies=replies,
            pools={"country": countries},
        )
        for countries, replies in (
            (EU_COUNTRIES, (
                "Yes, we deliver to {country}! Standard delivery there takes 2 to 4 working days.",
                "We do! Orders to {country} usually arrive within 2 to 4 working days.",
            )),
            (FAR_COUNTRIES, (
                (
                    "Yes, we deliver to {country}! Delivery there takes 4 to 7 working days, and customs "
                    "fees may apply."
                ),
                "We do! Orders to {country} arrive within 4 to 7 working days; customs fees may apply.",
            )),
            (UNSHIPPED_COUNTRIES, (
                (
                    "I'm sorry, we don't deliver to {country} yet. We currently ship within the EU and to "
                    "the UK, Switzerland and Norway."
                ),
                (
                    "Unfortunately we can't ship to {country} at the moment; we deliver within the EU and to "
                    "the UK, Switzerland and Norway."
                ),
            )),
        )
    )),
    Intent("shipping_costs", weight=2, branches=tuple(
        Branch(
            requests=(
                "How much is shipping to {country}?",
                "What does delivery to {country} cost?",
                "shipping costs for {country}?",
                "How much do you charge to send a parcel to {country}?",
                "what's the delivery fee to {country}",
                "How much is shipping?",
                "What are your shipping costs?",
                "Is shipping free?",
                "how much does delivery cost",
                "Do I have to pay for shipping?",
                "what's the delivery fee?",
            ),
            replies=replies,
            pools={"country": countries},
            ask=(
                "Which country should we deliver to?",
                "Happy to check! Which country would it be shipped to?",
            ),
            asks_for="country",
        )
        for countries, replies in (
            (EU_COUNTRIES, (
                "Shipping to {country} costs €4.95, and it's free on orders over €50.",
                "Delivery to {country} is €4.95, or free for orders over €50.",
            )),
            (FAR_COUNTRIES, (
                (
                    "Shipping to {country} costs €9.95, and it's free on orders over €100. Customs fees may "
                    "apply."
                ),
                "Delivery to {country} is €9.95, or free for orders over €100; customs fees may apply.",
            )),
        )
    )),
    Intent("contact_hours", branches=(Branch(
        requests=(
            "What are your opening hours?",
            "When is customer service available?",
            "how can I contact you?",
            "Are you open on weekends?",
            "what time does support close",
            "Is there a phone number I can call?",
            "When can I reach someone?",
            "what are your support hours",
        ),
        replies=(
            (
                "Our support team is here Monday to Friday from 8 am to 8 pm and on Saturdays from 9 am to 4 "
                "pm, in this chat or through the contact form."
            ),
            (
                "You can reach us in this chat or through the contact form, Monday to Friday 8 am to 8 pm "
                "and Saturdays 9 am to 4 pm."
            ),
        ),
    ),)),
    Intent("complaint", branches=(
        Branch(
            requests=(
                "I'm really unhappy with your service",
                "Your customer service is terrible",
                "This is the worst shopping experience I've ever had",
                "I've been waiting for an answer to my email for a week!",
                "I want to make a complaint",
                "nobody ever replies to my emails, this is ridiculous",
                "I'm very disappointed with how I've been treated",
            ),
            replies=(
                (
                    "I'm really sorry about your experience. I've passed your feedback on to our customer "
                    "care lead, who will get back to you within 24 hours."
                ),
                (
                    "I'm sorry we let you down. Your complaint is now with our customer care lead, who will "
                    "contact you within 24 hours."
                ),
            ),
        ),
        Branch(
            requests=(
                "I want to complain about order {order}, everything went wrong",
                "Order {order} has been a disaster from start to finish",
                "I'm very unhappy with how order {order} was handled",
                "This is my third message about order {order} and nobody helps",
                "Terrible service with {order}, I want to make a complaint",
            ),
            replies=(
                (
                    "I'm really sorry about your experience with order {order}. I've escalated it to our "
                    "customer care lead, who will contact you within 24 hours."
                ),
                (
                    "I'm sorry order {order} went so badly. Our customer care lead now has your case and "
                    "will contact you within 24 hours."
                ),
            ),
        ),
    )),
    Intent("greeting", weight=2, standalone=True, branches=(
        Branch(requests=GREETINGS, replies=GREETING_REPLIES),
        Branch(requests=NAMED_GREETINGS, replies=NAMED_GREETING_REPLIES),
    )),
    Intent("thanks", weight=2, standalone=True, branches=(Branch(
        requests=(
            "thanks for your help yesterday!",
            "Just wanted to say thank you, my parcel arrived",
            "Thanks, everything is sorted now",
            "great service, thank you!",
            "thank you so much, bye",
            "Cheers for the quick help",
            "All good now, thanks. Bye!",
            "The replacement arrived today, thank you!",
        ),
        replies=(
            "You're welcome! Glad everything is sorted. Have a great day!",
            "Thank you for the kind words! Have a lovely day.",
        ),
    ),)),
    Intent("human_agent", weight=2, branches=(Branch(
        requests=(
            "Can I talk to a real person?",
            "I want to speak to a human",
            "agent please",
            "this bot is useless, get me a human",
            "transfer me to customer service",
            "Is there a person I can talk to?",
            "human please!!",
            "I'd rather talk to someone from your team",
            "connect me with an agent",
            "Are you a bot? I want a real person",
        ),
        replies=(
            (
                "Of course. I'm connecting you with a colleague from our support team now; please stay in "
                "the chat."
            ),
            "Sure, I'm handing you over to a member of our team. Someone will be with you in a few minutes.",
        ),
    ),)),
    Intent("gift_wrap", branches=(
        Branch(
            requests=(
                "Can you gift wrap the {product}?",
                "Is gift wrapping available for the {product}?",
                "I'm buying the {product} as a present, can you wrap it?",
                "Could the {product} be sent gift wrapped?",
                "do you do gift wrapping for the {product}",
            ),
            replies=(
                (
                    "Yes! You can add gift wrapping for the {product} at checkout for €3.50, including a "
                    "handwritten card with your message."
                ),
                (
                    "Of course! Gift wrapping for the {product} costs €3.50 and you can add it at checkout, "
                    "with a personal message."
                ),
            ),
        ),
        Branch(
            requests=(
                "Do you offer gift wrapping?",
                "can I add a gift message?",
                "Is it possible to have my order gift wrapped?",
                "i want to send a gift, do you wrap?",
                "It's a present, can you leave the price off?",
            ),
            replies=(
                (
                    "Yes! You can add gift wrapping at checkout for €3.50, including a handwritten card with "
                    "your message. Prices are never shown on the packing slip."
                ),
                (
                    "Of course! Gift wrapping costs €3.50 at checkout and includes a personal message; we "
                    "never put prices in the parcel."
                ),
            ),
        ),
    )),
    Intent("warranty", branches=(
        Branch(
            requests=(
                "Is the {product} covered by a warranty?",
                "How long is the warranty on the {product}?",
                "does the {product} come with a guarantee?",
                "What does the warranty of the {product} cover?",
            ),
            replies=(
                (
                    "All our products come with a 2-year warranty, so your {product} is covered against "
                    "manufacturing defects."
                ),
                "The {product} has our 2-year warranty, which covers any manufacturing defect.",
            ),
        ),
        Branch(
            requests=(
                "My {product} stopped working after 3 months, is it under warranty?",
                "the {product} broke after a few weeks, can I get it repaired?",
                "my {product} has a defect, what does the warranty cover?",
                "The {product} from order {order} stopped working. Warranty?",
                "I'd like to make a warranty claim for the {product}, order {order}",
            ),
            replies=(
                (
                    "Your {product} is covered by our 2-year warranty. I've started a warranty claim for "
                    "order {order}, and we'll email you a free return label."
                ),
                (
                    "That's covered by our 2-year warranty. The claim for the {product} from order {order} "
                    "is open, and a free return label is on its way to your inbox."
                ),
            ),
            ask=(
                "I'm sorry to hear that! Could you give me your order number?",
                "Let me help with that. What's the order number?",
            ),
        ),
    )),
)  # fmt: skip

INTENTS: tuple[str, ...] = tuple(intent.name for intent in INTENT_TABLE)
_BY_NAME = {intent.name: intent for intent in INTENT_TABLE}


# ---------------------------------------------------------------------------------------------
# The turns around the request: openings, names, answers to the agent's question, thank-yous.

AGENT_GREETINGS = (
    f"Hi, welcome to {SHOP}! How can I help you today?",
    f"Hello! You're chatting with {SHOP} support. What can I do for you?",
)
GREETING_WORDS = ("Hi", "Hello", "Hey", "Good morning", "Hi there", "Hello there", "Good afternoon", "hiya")
GREETING_SEPARATORS = (", ", "! ", ". ", " ")
INTRODUCTIONS = (
    "Hi, this is {name}. ", "Hello, my name is {name}. ", "hi {name} here, ", "Hi, I'm {name}. ",
    "Good morning, {name} here. ",
)  # fmt: skip
SIGN_OFFS = (" Thanks, {name}", " - {name}", " Regards, {name}", " Thank you! {name}")
POLITE_SUFFIXES = (
    " Thanks!",
    " thanks",
    " Thank you.",
    " thx",
    " Please help.",
    " Thanks in advance!",
    " cheers",
)

NAMED_PREFIXES = ("Hi {name}! ", "Thanks for reaching out, {name}. ")
GREETED_PREFIXES = ("Hi! ", "Hello! ")
ANSWERED_PREFIXES = ("Thanks! ", "Thank you! ", "Great, thanks. ")

ANSWERS = {
    "order": (
        "it's {order}",
        "{order}",
        "Sure, it's {order}",
        "The order number is {order}",
        "order {order}",
        "{order} I think",
        "yes it's {order}",
        "Here you go: {order}",
    ),
    "country": (
        "{country}",
        "to {country}",
        "I'm in {country}",
        "{country} please",
        "It would go to {country}",
        "We live in {country}",
    ),
}

CLOSERS = (
    "thanks!", "Thank you so much", "great, thanks for your help", "perfect, that's all I needed",
    "ok thx", "cheers", "awesome thank you!!", "Thanks, have a nice day", "ok great. bye",
    "Thank you, that helps a lot", "Brilliant, thanks!", "ok, thank you",
)  # fmt: skip
CLOSER_REPLIES = ("You're welcome! Have a great day.", "Happy to help! Have a lovely day.")
NAMED_CLOSER_REPLIES = (
    "You're welcome, {name}! Have a great day.",
    "Happy to help, {name}! Have a lovely day.",
)

# Fake personal data for ``pii_rate``: reserved example domains, fictional phone ranges.
PII_SENTENCES = (
    " My email is {email}.",
    " You can reach me at {email}.",
    " Call me on {phone} if that's easier.",
    " my mobile is {phone}",
)

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
