"""Turning a growing list of token ids into text deltas that never split a character.

Byte-level BPE tokens can end in the middle of a multi-byte UTF-8 character (an emoji is often
two or three tokens). Decoding such a prefix yields U+FFFD; the decoder holds those bytes back
until the character is complete.
"""

from __future__ import annotations

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Feed token ids one at a time; get back the new text each one completes.

    Only a short window of recent tokens is re-decoded per step (from ``_prefix``), so the cost
    per token stays constant however long the reply grows.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window that is re-decoded
        self._read = 0  # ids before this are already emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        done = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix, len(self._ids))
        if text.endswith(REPLACEMENT) or len(text) <= len(done):
            return ""  # an incomplete character: wait for its next byte
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done) :]

    def flush(self) -> str:
        """Whatever is still held back at the end (an incomplete character decodes as U+FFFD)."""
        done = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix, len(self._ids))
        self._prefix = self._read = len(self._ids)
        return text[len(done) :]

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=False)
