"""Show generated text while it is produced, with whole characters and without stop strings.

``generate(..., streamer=TextStreamer(tokenizer))`` calls the streamer with every new token.
The streamer turns ids into text through :class:`glassformer.tokenizers.StreamDecoder`, which
holds back a character split across tokens until it is complete (no U+FFFD), and, when stop
strings are given, holds back any tail that could still become one, so a stop string is never
printed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO


class TextStreamer:
    """Write each row's text to ``out`` as its tokens arrive (meant for one row at a time).

    Args:
        tokenizer: the model's tokenizer.
        out: where to write (default stdout); flushed after every piece.
        eos_ids: ids that end a row; they are not printed.
        stop: strings that end a row; the text is cut before the first one.
    """

    def __init__(
        self, tokenizer, out: TextIO | None = None, eos_ids: Iterable[int] = (), stop: Iterable[str] = ()
    ) -> None:
        from glassformer.tokenizers import StreamDecoder

        self._make_decoder = lambda: StreamDecoder(tokenizer, skip_special_tokens=True)
        self.out = out if out is not None else sys.stdout
        self.eos_ids = set(eos_ids)
        self.stop = [s for s in stop if s]
        self.decoders: dict = {}
        self.pending: dict[int, str] = {}  # text held back because it may start a stop string
        self.stopped: set[int] = set()
        self.texts: dict[int, str] = {}  # everything written, per row

    def __call__(self, row: int, token_id: int) -> None:
        if row in self.stopped or token_id in self.eos_ids:
            return
        decoder = self.decoders.setdefault(row, self._make_decoder())
        self._emit(row, decoder.push(token_id), final=False)

    def flush(self) -> None:
        """Write what every row still holds back (call once generation has ended)."""
        for row, decoder in self.decoders.items():
            if row not in self.stopped:
                self._emit(row, decoder.flush(), final=True)
        self.decoders.clear()

    def _emit(self, row: int, piece: str, final: bool) -> None:
        text = self.pending.pop(row, "") + piece
        if self.stop:
            hits = [text.find(s) for s in self.stop if s in text]
            if hits:
                text = text[: min(hits)]
                self.stopped.add(row)
            elif not final:
                hold = _stop_prefix_len(text, self.stop)
                if hold:
                    text, self.pending[row] = text[:-hold], text[-hold:]
        if text:
            self.texts[row] = self.texts.get(row, "") + text
            self.out.write(text)
            self.out.flush()


def _stop_prefix_len(text: str, stop: list[str]) -> int:
    """Length of the longest tail of ``text`` that is the beginning of a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-n:]):
                best = n
                break
    return best


def cut_at_stop(text: str, stop: Iterable[str]) -> str:
    """``text`` up to (not including) the earliest stop string in it."""
    hits = [text.find(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else text
