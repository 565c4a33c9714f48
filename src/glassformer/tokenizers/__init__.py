"""Tokenizers: character-level, byte-level BPE, and any Hugging Face ``tokenizer.json``.

    tok = build_tokenizer("bpe", load_corpus("python-docs"), vocab_size=1024)
    ids = tok.encode("def f(x):")           # list[int]
    tok.decode(ids) == "def f(x):"          # exact for char and byte-level BPE
    tok.save("run/")                         # run/tokenizer.json
    load_tokenizer("run/")                   # the same tokenizer back

Every tokenizer has the same interface (:class:`Tokenizer`): ``encode``, ``decode``,
``vocab_size``, the special ids ``pad_id bos_id eos_id unk_id mask_id`` (None when absent),
``token_to_id``, ``id_to_token``, ``save`` and ``kind``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from glassformer.errors import DataError
from glassformer.io import read_json
from glassformer.tokenizers.base import (
    DEFAULT_SPECIALS,
    ROLE_NAMES,
    ROLES,
    TOKENIZER_FILE,
    Tokenizer,
)
from glassformer.tokenizers.char import CharTokenizer
from glassformer.tokenizers.hf import HFTokenizer, train_bpe
from glassformer.tokenizers.stream import StreamDecoder

KINDS = ("char", "bpe")
DEFAULT_BPE_VOCAB = 1024  # small enough for the tiny and demo models, large enough to merge common words

__all__ = [
    "DEFAULT_BPE_VOCAB", "DEFAULT_SPECIALS", "KINDS", "ROLES", "ROLE_NAMES", "TOKENIZER_FILE", "CharTokenizer",
    "HFTokenizer", "StreamDecoder", "Tokenizer", "build_tokenizer", "load_tokenizer", "train_bpe",
]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer in ``path``: a directory holding ``tokenizer.json``, or the file itself.

    Our character tokenizer is recognised by its ``"glassformer"`` field; anything else is
    handed to the ``tokenizers`` library (WordPiece, BPE, Unigram ...).
    """
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        where = f"{path}: no {TOKENIZER_FILE} in this directory" if path.is_dir() else f"{path}: no such file"
        raise DataError(where)
    data = read_json(file, error=DataError)
    marker = data.get("glassformer")
    if marker is not None:
        kind = marker.get("kind") if isinstance(marker, dict) else None
        if kind != "char":
            raise DataError(f"{file}: unknown glassformer tokenizer kind {kind!r}")
        return CharTokenizer.from_dict(data, source=str(file))
    return HFTokenizer.from_file(file)


def build_tokenizer(kind: str, text_or_texts: str | Iterable[str], vocab_size: int | None = None) -> Tokenizer:
    """Train a tokenizer of ``kind`` ("char" or "bpe") on a text or several texts.

    ``vocab_size`` is the BPE vocabulary (default :data:`DEFAULT_BPE_VOCAB`); for "char" it is a
    ceiling: a corpus with more distinct characters than that is an error.
    """
    if kind == "char":
        text = text_or_texts if isinstance(text_or_texts, str) else "\n".join(text_or_texts)
        tok = CharTokenizer.train(text)
        if vocab_size is not None and tok.vocab_size > vocab_size:
            raise DataError(
                f"the corpus has {tok.vocab_size - len(tok.specials)} distinct characters, which with "
                f"{len(tok.specials)} special tokens exceed vocab_size={vocab_size}")
        return tok
    if kind == "bpe":
        texts = [text_or_texts] if isinstance(text_or_texts, str) else text_or_texts
        return train_bpe(texts, vocab_size if vocab_size is not None else DEFAULT_BPE_VOCAB)
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
