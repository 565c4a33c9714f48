"""Tokenizers from the Hugging Face ``tokenizers`` library: byte-level BPE trained here, or any
``tokenizer.json`` (WordPiece for BERT, byte-level BPE for GPT-2, Unigram, ...).

Byte-level BPE (GPT-2, Radford et al. 2019 §2.2) starts from the 256 byte values, so every
string has an encoding and no ``<unk>`` is ever needed; merges learned from the corpus then join
frequent byte pairs into longer tokens. Decoding joins the bytes and reads them as UTF-8.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from glassformer.errors import DataError
from glassformer.tokenizers.base import (
    DEFAULT_SPECIALS,
    ROLES,
    Tokenizer,
    atomic_write_text,
    discover_specials,
)

CONFIG_FILE = "tokenizer_config.json"  # Hugging Face's side file; we read its *_token entries


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` behind the glassformer :class:`Tokenizer` interface.

    Ids are exactly those of ``tokenizers`` (hence of ``transformers``' fast tokenizers on the
    same file): ``encode`` applies the file's post-processor (BERT's ``[CLS] ... [SEP]``) unless
    ``add_special_tokens=False``. Special roles are found by name (``[PAD]``/``<pad>``,
    ``[CLS]``/``<bos>``/``<|endoftext|>``, ...) unless given as ``special_tokens`` (role -> token).
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, special_tokens: dict[str, str] | None = None) -> None:
        self.tokenizer = tokenizer
        self._overrides = {r: t for r, t in (special_tokens or {}).items() if r in ROLES and t is not None}
        self.special_tokens = discover_specials(tokenizer.token_to_id, self._overrides)
        self.kind = type(tokenizer.model).__name__.lower()  # "bpe", "wordpiece", "unigram", "wordlevel"
        self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike, special_tokens: dict[str, str] | None = None) -> HFTokenizer:
        """Load ``path`` (a tokenizer.json); roles from a sibling ``tokenizer_config.json`` if any."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: no such tokenizer file") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: byte {e.start} is not valid UTF-8; not a tokenizer.json") from None
        try:
            tok = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # the Rust side raises a bare Exception
            raise DataError(f"{path}: not a tokenizer.json that `tokenizers` can read ({e})") from None
        roles = read_config_roles(path.parent / CONFIG_FILE)
        roles.update(special_tokens or {})
        return cls(tok, roles)

    # ------------------------------------------------------------------ text <-> ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        # runs on all cores inside the Rust library; the "fast" variant skips offset tracking
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # fast: tokenizers >= 0.21
        encodings = encode(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(self.check_ids(ids), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        token = self.tokenizer.id_to_token(i) if 0 <= i < self._vocab_size else None
        if token is None:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self._vocab_size})")
        return token

    @property
    def special_ids(self) -> frozenset[int]:
        """The role ids plus every token the file marks special (e.g. ``<|endoftext|>``)."""
        added = {i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}
        return frozenset(super().special_ids | added)

    @property
    def is_byte_level(self) -> bool:
        """Decodes through bytes (GPT-2 style), so a token may end inside a UTF-8 character."""
        return isinstance(self.tokenizer.decoder, decoders.ByteLevel)

    # ------------------------------------------------------------------ saving

    def to_json(self) -> str:
        return self.tokenizer.to_str(pretty=True)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json``, plus ``tokenizer_config.json`` when roles were given by hand."""
        path = super().save(directory)
        if self._overrides:
            config = {f"{r}_token": t for r, t in self._overrides.items()}
            atomic_write_text(Path(directory) / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        return path


def read_config_roles(path: Path) -> dict[str, str]:
    """role -> token from a Hugging Face ``tokenizer_config.json`` (``pad_token``, ``cls_token`` ...)."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        return {}
    keys = {"pad": ("pad_token",), "bos": ("bos_token", "cls_token"), "eos": ("eos_token", "sep_token"),
            "unk": ("unk_token",), "mask": ("mask_token",)}
    roles: dict[str, str] = {}
    for role, names in keys.items():
        for name in names:
            value = config.get(name)
            if isinstance(value, dict):  # {"content": "[PAD]", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str):
                roles[role] = value
                break
    return roles


def _pieces(texts: Iterable[str], size: int = 1 << 16) -> Iterator[str]:
    """Cut long texts at line ends into pieces of about ``size`` characters, so the trainer can
    count words in parallel (a piece boundary only ever falls after a newline)."""
    if isinstance(texts, str):
        texts = [texts]
    for text in texts:
        start = 0
        while start < len(text):
            end = text.find("\n", start + size) + 1 or len(text)
            yield text[start:end]
            start = end


def train_bpe(texts: Iterable[str], vocab_size: int, specials: Sequence[str] = DEFAULT_SPECIALS,
              min_frequency: int = 2, show_progress: bool = False) -> HFTokenizer:
    """Train a byte-level BPE tokenizer with ``vocab_size`` ids (256 bytes + specials + merges).

    No normaliser and no prefix space: ``decode(encode(s)) == s`` for every string ``s``.
    """
    specials = list(specials)
    floor = 256 + len(specials)
    if vocab_size < floor:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE: it needs at least "
                         f"{floor} (256 bytes + {len(specials)} special tokens)")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
    )
    seen = [False]

    def pieces() -> Iterator[str]:
        for piece in _pieces(texts):
            seen[0] = seen[0] or bool(piece)
            yield piece

    tok.train_from_iterator(pieces(), trainer=trainer)
    if not seen[0]:
        raise DataError("cannot train a BPE tokenizer on empty text")
    return HFTokenizer(tok)
