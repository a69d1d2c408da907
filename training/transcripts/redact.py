"""PII redaction: customers' personal data is replaced by typed placeholders before training.

Support transcripts contain e-mail addresses, card numbers, IBANs, phone numbers and IP
addresses. :func:`redact` replaces each with a placeholder (``<EMAIL>``, ``<CARD>``, ...) and
counts what it replaced; :class:`Redactor` keeps those counts over a whole corpus for the
training report. Standard library only.

Detection is "shape, then proof": a precompiled regex finds candidates and a validator keeps
only the real ones (a Luhn check for cards, the ISO 13616 mod-97 check for IBANs,
:mod:`ipaddress` for IPv6, context and layout rules for phones). Overlapping candidates are
settled by the order of :data:`KINDS`: an e-mail beats a card, a card an IBAN, and so on.

Decisions worth knowing:

- An e-mail needs a dotted domain with an alphabetic TLD: ``root@localhost`` is not redacted.
- A card must start with 2-6 (the issuer ranges in use), have 13-19 digits and pass Luhn.
- Anything shaped like an IBAN (even with a bad checksum) is never read as a card or a phone.
- A bare digit run is a phone only after a phone word ("call", "tel", "mobile"...) or when it
  looks like a national number (``0`` then 9-10 digits); a number right after an id word
  ("order", "ticket", "invoice", "#"...) is an id, never a phone or a card.

``python -m training.transcripts.redact EVAL_FILE`` prints precision and recall on a labelled JSONL file.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from chatbot.errors import ChatbotError

KINDS = ("email", "card", "iban", "phone", "ip")
PLACEHOLDERS = {kind: f"<{kind.upper()}>" for kind in KINDS}

# How many characters before a candidate are searched for a context word ("order", "call").
CONTEXT_WINDOW = 32


@dataclass(frozen=True)
class Finding:
    """One piece of PII: its kind, its span in the text (``end`` exclusive) and the text itself."""

    kind: str
    start: int
    end: int
    text: str


# ---------------------------------------------------------------------------------------------
# Regexes. Each one finds candidates; the validators below decide.

# E-mail: a local part of atoms (letters, digits, "_%+-", so "+tags" work) joined by "." or "'", "@",
# one or more domain labels each followed by a dot, and an alphabetic TLD of 2-24 letters.
# Not glued to a preceding word, dot or "+"; a trailing sentence dot is left out.
EMAIL_RE = re.compile(
    r"""
    (?<![\w.+%-])
    [\w%+-]+(?:['.][\w%+-]+)*        # local part: john.doe+orders, o'brien
    @
    (?:[^\W_][\w-]*\.)+              # domain labels: mail.example.
    (?!(?:png|jpe?g|gif|svg|webp|bmp|pdf|txt|csv|log|docx?|xlsx?)\b)  # not a file: icon@2x.png
    [^\W\d_]{2,24}                   # TLD, letters only: com, co.uk's "uk"
    (?![\w-])
    """,
    re.VERBOSE,
)

# Card candidates: a run of digit groups joined by single spaces or dashes ("4111 1111 ...",
# "4111-1111-...", or one unbroken run). Not glued to a word, "+", a decimal point, a slash or
# "#". The run is cut into windows of whole groups by the validator.
CARD_RUN_RE = re.compile(r"(?<![\w+.,/#-])\d+(?:[ -]\d+)*")

# IBAN: country code (2 letters), 2 check digits, then either the printed form (groups of 4
# separated by single spaces, the last group 1-3 characters) or the electronic form (11-30
# characters, no spaces). Case-insensitive. The validator trims trailing groups that are words.
IBAN_RE = re.compile(
    r"""
    (?<!\w)
    [A-Z]{2}\d{2}                                  # country code + check digits: DE89
    (?:
        (?:\ [A-Z0-9]{4}){2,7}(?:\ [A-Z0-9]{1,3})?  # printed: " 3704 0044 0532 0130 00"
      | [A-Z0-9]{11,30}                            # electronic: 370400440532013000
    )
    (?!\w)
    """,
    re.VERBOSE | re.IGNORECASE,
)

# Phone candidates: an optional "+" (international) or "(" then digits; after that any mix of
# digits, a single separator (space, dot, dash) before a digit or "(", "(" before a digit, and
# ")" followed by an optional separator and a digit: "+49 (0)30 123456", "(555) 123-4567".
# Each alternative starts with a different character, so matching is linear.
PHONE_RE = re.compile(
    r"""
    (?<![\w+.,/:#(-])
    (?:\+\ ?|\()?\d                  # start: "+", "+ " or "(" and a digit
    (?:
        \d
      | [ .-]\(?\d                   # one separator, maybe "(", a digit
      | \(\d                         # "(" glued to digits: "+49(0)30"
      | \)[ .-]?\d                   # ")" then maybe a separator, a digit
    )*
    """,
    re.VERBOSE,
)

# One IPv4 octet, 0-255 with no leading zero.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

# IPv4: four octets joined by dots, not part of a longer dotted run (versions, "999.1.1.1").
IPV4_RE = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")

# IPv6 candidates: hex digits and at least two colons, an optional dotted IPv4 tail
# ("::ffff:192.0.2.1") and zone ("%eth0"); :mod:`ipaddress` decides. Times ("12:30:45") and MAC
# addresses fail that check.
IPV6_RE = re.compile(
    r"""
    (?<![\w:])
    (?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)       # at least two colons
    [0-9A-Fa-f:]{2,39}
    (?:\d{1,3}(?:\.\d{1,3}){3})?         # embedded IPv4 tail
    (?:%\w+)?                            # zone id
    (?![\w:]|\.\d)
    """,
    re.VERBOSE,
)

# Context words just before a candidate. The closest one wins: "order", "ticket", "#"... make
# an id; "call", "phone", "mobile"... a phone; "card", "visa"... a card; "ip" an address;
# "version", "build"... a version number.
CONTEXT_RE = re.compile(
    r"""
    (?P<id>\b(?:orders?|ticket|invoice|inv|tracking|track|ref|reference|case|account|acct
        |customer|client|sku|serial|imei|item|model|part|article|product|zip|postcode
        |postal\ code|plz|cep|receipt|transaction|txn|confirmation|booking|parcel|shipment
        |package|commande|bestellung|bestellnummer|pedido|rechnung|factura|facture|fattura
        |ordine|auftrag|sendung|colis|dossier|kundennummer|subscription|membership|contract
        |policy|licen[cs]e|voucher|coupon|gift|ean|isbn|upc|gtin|barcode|no|nr|n[°º])\b\.?|\#|〒)
  | (?P<phone>\b(?:phone|tel|telephone|call|calling|mobile|cell|cellphone|whatsapp|sms|text
        |fax|ring|reach|contact|landline|handy|telefon|telefonnummer|rufnummer|anrufen
        |t[ée]l[ée]phone|portable|appel(?:ez|er)?|joindre|tel[ée]fono|m[óo]vil|llamar|cellulare
        |chiamare|bellen|mobiel)\b)
  | (?P<card>\b(?:card|cards|visa|mastercard|amex|maestro|credit|debit|karte|kreditkarte
        |carte|tarjeta|carta|cc)\b)
  | (?P<ip>\b(?:ip|ipv4|ipv6|ip\ address)\b)
  | (?P<version>\b(?:version|ver|v|build|firmware|release|update|app|ios|android)\b)
    """,
    re.VERBOSE | re.IGNORECASE,
)

# "no", "nr", "n°", "#": an id word alone, but "card no" is a card and "phone nr" a phone.
NUMBER_ABBREVIATION_RE = re.compile(r"(?:no|nr|n[°º])\.?|\#", re.IGNORECASE)

# Dates and other numeric shapes that a phone candidate must not be.
DATE_RE = re.compile(
    r"""
    \d{4}[-./]\d{1,2}[-./]\d{1,2}        # 2024-05-03
  | \d{1,2}[-./]\d{1,2}[-./](?:\d{4}|\d{2})  # 03.05.2024, 03-05-24
    """,
    re.VERBOSE,
)
ZIP_PLUS_FOUR_RE = re.compile(r"\d{5}-\d{4}")  # US ZIP+4: 94105-1234

# Just around a candidate: a currency (an amount), or a decimal/time continuation after it.
CURRENCY_BEFORE_RE = re.compile(r"(?:[$€£¥₹]|\b(?:eur|usd|gbp|chf|sek|nok|dkk|pln))\s?$", re.IGNORECASE)
AMOUNT_AFTER_RE = re.compile(
    r"^(?:[.,:]\d|\s?(?:[$€£¥₹%]|(?:eur|usd|gbp|chf|sek|nok|dkk|pln|euros?|dollars?)\b))",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------------------
# Checksums.


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check used by payment cards."""
    if not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (spaces allowed, any case) passes the ISO 13616 mod-97 check.

    The first four characters move to the end, letters become 10-35, and the resulting number
    must leave remainder 1 when divided by 97. Only the length (15-34) and the alphabet are
    checked besides; country-specific lengths are not.
    """
    compact = iban.replace(" ", "").upper()
    if not (15 <= len(compact) <= 34 and compact.isascii() and compact.isalnum()):
        return False
    if not (compact[:2].isalpha() and compact[2:4].isdigit()):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


# ---------------------------------------------------------------------------------------------
# Context.


def context_before(text: str, start: int) -> str | None:
    """The kind of the context word closest before ``start`` ("id", "phone", "card", "version").

    Only the current line and :data:`CONTEXT_WINDOW` characters are looked at; ``None`` when
    there is no context word.
    """
    window = text[max(0, start - CONTEXT_WINDOW) : start]
    window = window.rsplit("\n", 1)[-1]
    matches = list(CONTEXT_RE.finditer(window))
    if not matches:
        return None
    last = matches[-1]
    if len(matches) > 1 and NUMBER_ABBREVIATION_RE.fullmatch(last.group()):
        before = matches[-2]
        if last.start() - before.end() <= 2:  # "card no", "tel. nr": the noun says what it is
            return before.lastgroup
    return last.lastgroup


def looks_like_amount(text: str, start: int, end: int) -> bool:
    """Whether the span is money or a decimal: a currency before or after it, or ``,00`` after."""
    return bool(CURRENCY_BEFORE_RE.search(text[max(0, start - 5) : start])) or bool(
        AMOUNT_AFTER_RE.match(text[end : end + 8])
    )


def iban_shaped_spans(text: str) -> list[tuple[int, int]]:
    """Spans shaped like an IBAN, valid or not: cards and phones are never looked for inside."""
    return [match.span() for match in IBAN_RE.finditer(text)]


def overlaps(span: tuple[int, int], spans: Sequence[tuple[int, int]]) -> bool:
    """Whether ``span`` overlaps any of ``spans``."""
    return any(span[0] < end and start < span[1] for start, end in spans)


# ---------------------------------------------------------------------------------------------
# Candidates per kind.


def email_candidates(text: str) -> Iterator[Finding]:
    """E-mail addresses: the regex alone decides."""
    for match in EMAIL_RE.finditer(text):
        yield Finding("email", match.start(), match.end(), match.group())


def card_group_layout_ok(groups: Sequence[str], separators: Sequence[str]) -> bool:
    """Whether grouped digits are laid out like a card: one separator kind, ``4`` then 3-6 each."""
    if len(groups) == 1:
        return True
    if len(set(separators)) != 1 or len(groups[0]) != 4:
        return False
    return all(3 <= len(group) <= 6 for group in groups[1:])


def card_window_ok(text: str, start: int, groups: Sequence[str], separators: Sequence[str]) -> bool:
    """Whether these whole groups, starting at ``start``, are a card number."""
    digits = "".join(groups)
    if not (13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)):
        return False
    if not card_group_layout_ok(groups, separators):
        return False
    return context_before(text, start) not in ("id", "phone")


def card_candidates(text: str) -> Iterator[Finding]:
    """Card numbers: the longest windows of whole groups in each digit run that pass the checks."""
    for match in CARD_RUN_RE.finditer(text):
        parts = re.split(r"([ -])", match.group())
        groups, separators = parts[0::2], parts[1::2]
        offsets = [match.start()]
        for group, separator in zip(groups[:-1], separators, strict=True):
            offsets.append(offsets[-1] + len(group) + len(separator))
        yield from card_windows(text, groups, separators, offsets)


def card_window_ends(groups: Sequence[str], first: int) -> list[int]:
    """The group indexes (exclusive) a window starting at ``first`` may end at, longest first.

    A window holds at most 19 digits, so this is short whatever the length of the run.
    """
    ends, digits = [], 0
    for last in range(first, len(groups)):
        digits += len(groups[last])
        if digits > 19:
            break
        ends.append(last + 1)
    return ends[::-1]


def card_windows(
    text: str, groups: Sequence[str], separators: Sequence[str], offsets: Sequence[int]
) -> Iterator[Finding]:
    """Walk the groups of one run left to right, taking the longest valid window at each start."""
    first = 0
    while first < len(groups):
        for last in card_window_ends(groups, first):
            start, end = offsets[first], offsets[last - 1] + len(groups[last - 1])
            if text[end : end + 1].isalnum():
                continue
            if card_window_ok(text, start, groups[first:last], separators[first : last - 1]):
                yield Finding("card", start, end, text[start:end])
                first = last - 1
                break
        first += 1


def iban_candidates(text: str) -> Iterator[Finding]:
    """IBANs: checksum-valid candidates, dropping trailing groups that turn out to be words."""
    for match in IBAN_RE.finditer(text):
        candidate = match.group()
        while not iban_valid(candidate) and " " in candidate:
            candidate = candidate.rsplit(" ", 1)[0]
        if iban_valid(candidate):
            yield Finding("iban", match.start(), match.start() + len(candidate), candidate)


def phone_layout_ok(candidate: str) -> bool:
    """Whether a phone candidate's groups are laid out like a phone number, not a list of numbers."""
    groups = re.findall(r"\d+", candidate)
    separators = set(re.findall(r"[ .-]", candidate))
    if candidate.count("(") != candidate.count(")") or candidate.count("(") > 1:
        return False
    if "." in separators and min(len(group) for group in groups) < 2:
        return False  # versions and IPs: 10.0.19045, 192.168.1.10
    if all(len(group) == 2 for group in groups) and len(groups) != 5:
        return False  # "sizes 10 12 14 16"; the French "06 12 34 56 78" has five pairs
    return sum(len(group) == 1 for group in groups[1:]) < 2


def phone_shape_rejected(candidate: str) -> bool:
    """Whether a phone candidate is really a date, an IPv4 address or a ZIP+4 code."""
    date = DATE_RE.match(candidate)
    if date and candidate[date.end() : date.end() + 1] in ("", " "):
        return True  # a date, maybe followed by a time: "2024-05-03 14:30"
    return bool(IPV4_RE.fullmatch(candidate) or ZIP_PLUS_FOUR_RE.fullmatch(candidate))


def phone_ok(text: str, start: int, end: int) -> bool:
    """Whether the candidate ``text[start:end]`` is a phone number (see the module's rules)."""
    candidate = text[start:end]
    digits = re.sub(r"\D", "", candidate)
    if not 7 <= len(digits) <= 15 or looks_like_amount(text, start, end):
        return False
    if candidate.startswith("+"):
        return phone_layout_ok(candidate)
    context = context_before(text, start)
    if context in ("id", "version", "card") or phone_shape_rejected(candidate):
        return False
    if candidate.isdigit():  # a bare run needs a phone word, or a national 0-prefixed shape
        return context == "phone" or (candidate[0] == "0" and 10 <= len(digits) <= 11)
    return phone_layout_ok(candidate)


def phone_candidates(text: str) -> Iterator[Finding]:
    """Phone numbers: candidates that pass :func:`phone_ok`."""
    for match in PHONE_RE.finditer(text):
        start, end = match.span()
        if text[start] == "(" and ")" not in match.group():
            start += 1  # a parenthesised remark: "(call 0612345678)"
        if phone_ok(text, start, end):
            yield Finding("phone", start, end, text[start:end])


def ipv6_valid(candidate: str) -> bool:
    """Whether ``candidate`` is an IPv6 address (full, ``::``-compressed or with an IPv4 tail)."""
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return any(char not in ":" for char in candidate)


def ip_candidates(text: str) -> Iterator[Finding]:
    """IPv4 addresses (not after a version word) and IPv6 addresses."""
    for match in IPV4_RE.finditer(text):
        if context_before(text, match.start()) != "version":
            yield Finding("ip", match.start(), match.end(), match.group())
    for match in IPV6_RE.finditer(text):
        if ipv6_valid(match.group()):
            yield Finding("ip", match.start(), match.end(), match.group())


CANDIDATES = {
    "email": email_candidates,
    "card": card_candidates,
    "iban": iban_candidates,
    "phone": phone_candidates,
    "ip": ip_candidates,
}


# ---------------------------------------------------------------------------------------------
# Public API.


def resolve(candidates: Sequence[Finding]) -> list[Finding]:
    """Non-overlapping findings sorted by start: earlier kinds win, then longer, then earlier spans."""
    ranked = sorted(candidates, key=lambda f: (KINDS.index(f.kind), f.start - f.end, f.start))
    kept: list[Finding] = []
    for finding in ranked:
        if not overlaps((finding.start, finding.end), [(k.start, k.end) for k in kept]):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)


def find_pii(text: str) -> list[Finding]:
    """Every piece of PII in ``text``: non-overlapping, sorted by start."""
    shaped = iban_shaped_spans(text)
    candidates = [finding for kind in KINDS for finding in CANDIDATES[kind](text)]
    return resolve(
        [f for f in candidates if f.kind not in ("card", "phone") or not overlaps((f.start, f.end), shaped)]
    )


def redact(text: str) -> tuple[str, Counter[str]]:
    """``text`` with each finding replaced by its placeholder, and how many of each kind."""
    pieces: list[str] = []
    counts: Counter[str] = Counter()
    position = 0
    for finding in find_pii(text):
        pieces += [text[position : finding.start], PLACEHOLDERS[finding.kind]]
        counts[finding.kind] += 1
        position = finding.end
    pieces.append(text[position:])
    return "".join(pieces), counts


class Redactor:
    """Redacts text after text and keeps the counts per kind over all of them (for the report)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, text: str) -> str:
        """``text`` redacted; its counts are added to :attr:`counts`."""
        redacted, counts = redact(text)
        self.counts.update(counts)
        return redacted


# ---------------------------------------------------------------------------------------------
# Evaluation on a labelled JSONL file: {"text": ..., "pii": [{"kind": ..., "text": ...}]}.


def load_labelled(path: str | Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """The (text, [(kind, span text), ...]) examples of a labelled JSONL file."""
    examples = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ChatbotError(f"cannot read the labelled file {path}: {error}") from error
    for number, line in enumerate(lines, 1):
        if line.strip():
            examples.append(parse_labelled_line(line, f"{path}:{number}"))
    return examples


def parse_labelled_line(line: str, where: str) -> tuple[str, list[tuple[str, str]]]:
    """One labelled line, checked: every label has a known kind and occurs in the text."""
    try:
        record = json.loads(line)
        text, labels = record["text"], [(item["kind"], item["text"]) for item in record["pii"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ChatbotError(f"{where}: not a labelled line ({error})", hint=EVAL_HINT) from error
    for kind, span in labels:
        if kind not in KINDS or span not in text:
            raise ChatbotError(f"{where}: bad label {kind!r} {span!r}", hint=EVAL_HINT)
    return text, labels


EVAL_HINT = 'each line must be {"text": ..., "pii": [{"kind": ..., "text": ...}]} with kinds from KINDS'


def score(true_positives: int, predicted: int, support: int) -> dict[str, float]:
    """Precision, recall and support; an empty denominator scores 1.0."""
    return {
        "precision": true_positives / predicted if predicted else 1.0,
        "recall": true_positives / support if support else 1.0,
        "support": float(support),
    }


def evaluate(path: str | Path) -> dict[str, dict[str, float]]:
    """Precision, recall and support per kind and for "all", matching findings to labels by text."""
    true_positives: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    support: Counter[str] = Counter()
    for text, labels in load_labelled(path):
        found = Counter((f.kind, f.text) for f in find_pii(text))
        expected = Counter(labels)
        for (kind, _), count in (found & expected).items():
            true_positives[kind] += count
        predicted.update(kind for kind, _ in found.elements())
        support.update(kind for kind, _ in expected.elements())
    result = {kind: score(true_positives[kind], predicted[kind], support[kind]) for kind in KINDS}
    result["all"] = score(true_positives.total(), predicted.total(), support.total())
    return result


def format_evaluation(result: dict[str, dict[str, float]]) -> str:
    """The evaluation as a small markdown table."""
    lines = ["| kind | precision | recall | support |", "|---|---:|---:|---:|"]
    for kind, row in result.items():
        lines.append(f"| {kind} | {row['precision']:.3f} | {row['recall']:.3f} | {int(row['support'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.transcripts.redact EVAL_FILE``: print the evaluation table; 0 done,
    1 error, 2 usage."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m training.transcripts.redact EVAL_FILE", file=sys.stderr)
        return 2
    try:
        print(format_evaluation(evaluate(args[0])))
    except ChatbotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
