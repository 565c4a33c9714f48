"""What every tokenizer offers: text <-> ids, special tokens by role, save to ``tokenizer.json``.

A tokenizer knows five special *roles*: ``pad`` (filler after the end of a short sequence),
``bos`` (start of a sequence; BERT's ``[CLS]``), ``eos`` (end; BERT's ``[SEP]``), ``unk`` (a
character or piece the vocabulary lacks) and ``mask`` (the token a masked language model must
recover). Each role maps to a token string, and through the vocabulary to an id, or to None when
the vocabulary has no such token.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from glassformer.errors import DataError
from glassformer.io import atomic_write_text, make_dirs

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"

ROLES = ("pad", "bos", "eos", "unk", "mask")
DEFAULT_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>")

# Names that mean a role in the vocabularies people meet: ours, BERT's, RoBERTa/T5/Marian's, GPT-2's.
# Earlier names win, so a vocabulary holding both <bos> and <|endoftext|> uses <bos>.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "bos": ("<bos>", "[CLS]", "<s>", "<|endoftext|>"),
    "eos": ("<eos>", "[SEP]", "</s>", "<|endoftext|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "mask": ("<mask>", "[MASK]"),
}


def discover_specials(token_to_id, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """role -> token string, for the roles whose token is in the vocabulary.

    ``token_to_id`` looks a token up (None when absent); ``overrides`` (role -> token) come first,
    e.g. from a Hugging Face ``tokenizer_config.json``.
    """
    found: dict[str, str] = {}
    for role in ROLES:
        candidates = ((overrides or {}).get(role),) + ROLE_NAMES[role]
        for name in candidates:
            if name is not None and token_to_id(name) is not None:
                found[role] = name
                break
    return found


def length_limit(*limits: int | None) -> int | None:
    """The smallest of the given maxima that are set (None when none is)."""
    found = [int(n) for n in limits if n is not None]
    return min(found) if found else None


def warn_truncated(what: str, n_tokens: int, limit: int) -> None:
    """The one warning line a cut text gets: how many tokens it had and how many were dropped."""
    log.warning("%s has %d tokens, more than the %d the model reads: the last %d were dropped",
                what, n_tokens, limit, n_tokens - limit)


def pad_id(model_config: Any, tokenizer: Tokenizer | None = None, generation_config: Any = None) -> int:
    """The one rule for the id that fills a batch out: the generation config's ``pad_token_id``,
    else the tokenizer's pad token, else the model config's pad, else its eos, else 0. Padding is
    masked, so the choice never changes a result; only the printed ids show it."""
    for value in (getattr(generation_config, "pad_token_id", None), getattr(tokenizer, "pad_id", None),
                  model_config.pad_token_id, getattr(model_config, "eos_token_id", None)):
        if value is not None:
            return value
    return 0


class Tokenizer(ABC):
    """Base class: ``encode``/``decode``, the vocabulary, special ids by role, ``save``.

    Subclasses set ``kind`` ("char", "bpe", "wordpiece", ...) and ``special_tokens``
    (role -> token string).
    """

    kind: str = "base"
    special_tokens: dict[str, str]
    # the longest sequence (in tokens, special tokens included) the checkpoint declares; None: not declared
    model_max_length: int | None = None
    # True when the model was trained on this tokenizer's own template (a Hugging Face checkpoint's
    # post-processor: BERT's [CLS] ... [SEP], Marian's ... </s>); set by the loader. Models trained
    # here read encoder input wrapped by role (bos ... eos) and seq2seq sources as plain ids.
    own_template: bool = False

    # ------------------------------------------------------------------ text <-> ids

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. ``add_special_tokens`` applies the tokenizer's own template
        (e.g. BERT's ``[CLS] ... [SEP]``); tokenizers without one ignore it."""

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """``encode`` for many texts (subclasses may run them in parallel)."""
        return [self.encode(t, add_special_tokens) for t in texts]

    def encode_for_model(self, text: str, max_length: int | None = None, *, what: str = "the text") -> list[int]:
        """The ids a model reads for ``text``: ``encode(text)`` cut to the smaller of ``max_length``
        and :attr:`model_max_length`, with one warning line naming how many tokens were dropped.

        Tokenizers with a template (Hugging Face's ``[CLS] ... [SEP]``) keep it whole and cut the
        text inside it, as ``transformers`` does with ``truncation=True``.
        """
        ids = self.encode(text)
        limit = length_limit(max_length, self.model_max_length)
        if limit is not None and len(ids) > limit:
            warn_truncated(what, len(ids), limit)
            ids = ids[:limit]
        return ids

    # ------------------------------------------------------------------ model input

    def wrap(self, ids: Sequence[int], pair: Sequence[int] | None = None) -> list[int]:
        """Ids encoded without special tokens, wrapped as an encoder (BERT) reads them: the
        tokenizer's own template when the model was trained on it (found by encoding ``""``), else
        ``bos ids eos`` (``bos a eos b eos`` for a pair) when both tokens exist, else unchanged."""
        if self.own_template:
            around = self.encode("", add_special_tokens=True)
            if len(around) != 2:
                return [*around, *ids, *(pair or ())]
            start, end = around
        elif self.bos_id is not None and self.eos_id is not None:
            start, end = self.bos_id, self.eos_id
        else:
            return [*ids, *(pair or ())]
        return [start, *ids, end, *((*pair, end) if pair is not None else ())]

    def encode_input(self, text: str, max_length: int | None = None, *, what: str = "the text") -> list[int]:
        """The wrapped ids (:meth:`wrap`) an encoder reads for ``text``, cut to the smaller of
        ``max_length`` and :attr:`model_max_length` keeping the closing token, with one warning line."""
        if self.own_template:
            ids = self.encode_for_model(text, max_length, what=what)
        else:
            ids = self.wrap(self.encode(text, add_special_tokens=False))
        limit = length_limit(max_length, self.model_max_length)
        if limit is not None and len(ids) > limit:
            warn_truncated(what, len(ids), limit)
            ids = ids[: limit - 1] + ids[-1:]
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        """The ids a decoder continues for a prompt: with the tokenizer's own template (a model trained
        on it), its leading special tokens and the text (Llama's ``<s>`` / ``<|begin_of_text|>``), never
        a closing one; otherwise the plain ids (GPT-2's template adds nothing either way)."""
        ids = self.encode(text, add_special_tokens=False)
        if not self.own_template:
            return ids
        full = self.encode(text, add_special_tokens=True)
        for start in range(len(full) - len(ids) + 1):
            if full[start:start + len(ids)] == ids:
                return full[:start + len(ids)]  # (leading specials, text): what comes after is dropped
        return ids

    def encode_source(self, text: str) -> list[int]:
        """The ids an encoder-decoder reads for a source text: the tokenizer's own template when
        the model was trained on it (Marian's ``... </s>``), else plain ids, as our seq2seq data has."""
        return self.encode(text, add_special_tokens=self.own_template)

    @abstractmethod
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; special tokens are written out unless skipped."""

    # ------------------------------------------------------------------ vocabulary

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id is in ``[0, vocab_size)``."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary entry, or None when it is not in the vocabulary."""

    @abstractmethod
    def id_to_token(self, i: int) -> str:
        """The vocabulary entry of id ``i``; a ValueError when ``i`` is outside the vocabulary."""

    def __len__(self) -> int:
        return self.vocab_size

    def check_ids(self, ids: Iterable[int]) -> list[int]:
        """``ids`` as a list, refusing any outside ``[0, vocab_size)`` by position."""
        ids = [int(i) for i in ids]
        n = self.vocab_size
        for pos, i in enumerate(ids):
            if not 0 <= i < n:
                raise DataError(f"token id {i} at position {pos} is outside the vocabulary [0, {n})")
        return ids

    # ------------------------------------------------------------------ special tokens

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.token_to_id(token)

    @property
    def pad_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos")

    @property
    def unk_id(self) -> int | None:
        return self._role_id("unk")

    @property
    def mask_id(self) -> int | None:
        return self._role_id("mask")

    @property
    def special_ids(self) -> frozenset[int]:
        """Every id that stands for a special token (never masked, never sampled as noise)."""
        return frozenset(i for i in (self._role_id(r) for r in ROLES) if i is not None)

    def require(self, *roles: str, purpose: str) -> None:
        """Raise a DataError naming the missing special tokens that ``purpose`` needs."""
        missing = [r for r in roles if self._role_id(r) is None]
        if missing:
            wanted = ", ".join(f"{r} ({' / '.join(ROLE_NAMES[r][:2])})" for r in missing)
            raise DataError(f"{purpose} needs special tokens this {self.kind} tokenizer lacks: {wanted}")

    # ------------------------------------------------------------------ saving

    @abstractmethod
    def to_json(self) -> str:
        """The full ``tokenizer.json`` text."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/tokenizer.json`` (atomically); returns its path."""
        path = make_dirs(directory) / TOKENIZER_FILE
        atomic_write_text(path, self.to_json())
        return path

    def __repr__(self) -> str:
        specials = ", ".join(f"{r}={self._role_id(r)}" for r in ROLES if r in self.special_tokens)
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size}, {specials})"
