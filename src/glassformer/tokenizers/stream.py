"""Decode a stream of token ids as they arrive, for a printer that shows text while it is generated.

Decoding each id on its own goes wrong in two ways: a byte-level token may hold only part of a
multi-byte UTF-8 character (decoded alone it becomes U+FFFD), and some decoders look at the
neighbouring token (WordPiece joins ``##`` pieces, drops the space before one). So the decoder
keeps a short window of ids: it decodes the window with and without the newest ids and emits only
the new tail, and holds the tail back while it ends in U+FFFD, i.e. in an unfinished character.
"""

from __future__ import annotations

from glassformer.tokenizers.base import Tokenizer

REPLACEMENT = "\ufffd"


class StreamDecoder:
    """``push(id)`` returns the text newly completed by ``id``; ``flush()`` returns the rest.

    For tokenizers whose decoding is a concatenation of pieces (character-level, byte-level BPE)
    ``"".join(pushes) + flush() == tokenizer.decode(all ids)`` exactly, and no U+FFFD appears
    where a character was split across tokens.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: one emitted chunk of context for the decoder
        self.read_offset = 0  # ids before this have been emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one id; the text it completes ("" while a character is still unfinished)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        if new_text.endswith(REPLACEMENT) or len(new_text) <= len(prefix_text):
            return ""  # an unfinished character (or nothing visible yet): wait for more ids
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new_text[len(prefix_text):]

    def flush(self) -> str:
        """Whatever is still held back (a trailing U+FFFD is real once no more ids come)."""
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        self.ids, self.prefix_offset, self.read_offset = [], 0, 0
        return new_text[len(prefix_text):]
