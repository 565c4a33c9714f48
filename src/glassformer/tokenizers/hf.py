"""Tokenizers from the Hugging Face ``tokenizers`` library: byte-level BPE trained here, or any
``tokenizer.json`` (WordPiece for BERT, byte-level BPE for GPT-2, Unigram, ...).

A ``tokenizer.json`` may carry ``padding`` and ``truncation`` settings (all-MiniLM-L6-v2's pads
every text to 128 ids). ``transformers`` switches them off unless a call asks for them, so the
wrapper does too: encoding one text gives exactly ``AutoTokenizer.from_pretrained(dir)(text)
["input_ids"]``, batches are padded by glassformer with an attention mask, and the settings are
only kept to be written back on save. Texts longer than the checkpoint's declared maximum
(``tokenizer_config.json`` ``model_max_length``, ``sentence_bert_config.json``
``max_seq_length``) are cut by :meth:`HFTokenizer.encode_for_model`, with a warning.

Byte-level BPE (GPT-2, Radford et al. 2019 §2.2) starts from the 256 byte values, so every
string has an encoding and no ``<unk>`` is ever needed; merges learned from the corpus then join
frequent byte pairs into longer tokens. Decoding joins the bytes and reads them as UTF-8.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from glassformer.errors import DataError
from glassformer.io import atomic_write_json, read_json
from glassformer.tokenizers.base import (
    DEFAULT_SPECIALS,
    ROLES,
    Tokenizer,
    discover_specials,
    length_limit,
    warn_truncated,
)

CONFIG_FILE = "tokenizer_config.json"  # Hugging Face's side file: *_token entries, model_max_length
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"  # sentence-transformers' side file: max_seq_length
# transformers writes int(1e30) as model_max_length when a checkpoint declares none
NO_LIMIT = 10**9
# Tokenizer classes whose transformers constructor rebuilds the pre-tokenizer as
# ByteLevel(add_prefix_space=<tokenizer_config.json's add_prefix_space, default False>), whatever
# tokenizer.json says (GPT2TokenizerFast in transformers 4, GPT2Tokenizer in 5).
PREFIX_SPACE_FROM_CONFIG = {"GPT2Tokenizer", "GPT2TokenizerFast", "CodeGenTokenizer", "CodeGenTokenizerFast"}


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` behind the glassformer :class:`Tokenizer` interface.

    Ids are exactly those of ``tokenizers`` (hence of ``transformers``' fast tokenizers on the
    same file): ``encode`` applies the file's post-processor (BERT's ``[CLS] ... [SEP]``) unless
    ``add_special_tokens=False``. Special roles are found by name (``[PAD]``/``<pad>``,
    ``[CLS]``/``<bos>``/``<|endoftext|>``, ...) unless given as ``special_tokens`` (role -> token).
    """

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, special_tokens: dict[str, str] | None = None,
        model_max_length: int | None = None,
    ) -> None:
        # The file's padding/truncation would turn every text into a fixed number of ids, padding
        # included (the bug of issue 11). Keep them only to write them back; encode without them.
        self.file_settings: dict[str, Any] = {"padding": None, "truncation": None}
        if tokenizer.padding is not None or tokenizer.truncation is not None:
            data = json.loads(tokenizer.to_str())
            self.file_settings = {key: data.get(key) for key in self.file_settings}
            tokenizer.no_padding()
            tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length
        self._overrides = {r: t for r, t in (special_tokens or {}).items() if r in ROLES and t is not None}
        self.special_tokens = discover_specials(tokenizer.token_to_id, self._overrides)
        self.kind = type(tokenizer.model).__name__.lower()  # "bpe", "wordpiece", "unigram", "wordlevel"
        self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.source = "the tokenizer"  # its file, once loaded from one (named in errors)

    @contextlib.contextmanager
    def _rust_errors(self):
        """A panic inside the Rust library (a pre-tokenizer regex that gives up on an input:
        "retry-limit-in-match over") as a DataError naming the tokenizer file. pyo3's
        PanicException derives from BaseException, so ``except Exception`` does not see it."""
        try:
            yield
        except BaseException as e:
            if type(e).__name__ != "PanicException":
                raise
            raise DataError(f"{self.source} failed on this text ({str(e).strip()}); its pre-tokenizer or "
                            "normalizer cannot handle it (a regex that backtracks without end?)") from None

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
        config = read_json(path.parent / CONFIG_FILE, error=DataError) if (path.parent / CONFIG_FILE).is_file() else {}
        apply_config_settings(tok, config)
        roles = config_roles(config)
        roles.update(special_tokens or {})
        loaded = cls(tok, roles, declared_max_length(path.parent))
        loaded.source = str(path)
        return loaded

    # ------------------------------------------------------------------ text <-> ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        with self._rust_errors():
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_for_model(self, text: str, max_length: int | None = None, *, what: str = "the text") -> list[int]:
        """``encode(text)`` cut to the smaller of ``max_length`` and :attr:`model_max_length`.

        The template (``[CLS] ... [SEP]``) stays whole: the text inside it is cut, exactly as
        ``transformers`` does with ``truncation=True, max_length=...``.
        """
        limit = length_limit(max_length, self.model_max_length)
        with self._rust_errors():
            encoding = self.tokenizer.encode(text, add_special_tokens=False)
        n_special = self.tokenizer.num_special_tokens_to_add(False)
        total = len(encoding.ids) + n_special
        if limit is not None and total > limit:
            if limit < n_special + 1:
                raise DataError(f"a maximum length of {limit} leaves no room for text between {n_special} special tokens")
            warn_truncated(what, total, limit)
            encoding.truncate(limit - n_special)
        return self.tokenizer.post_process(encoding).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        # runs on all cores inside the Rust library; the "fast" variant skips offset tracking
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # fast: tokenizers >= 0.21
        with self._rust_errors():
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
        """The ``tokenizer.json`` text, with the file's own padding/truncation settings put back."""
        text = self.tokenizer.to_str(pretty=True)
        if all(v is None for v in self.file_settings.values()):
            return text
        data = json.loads(text)
        data.update(self.file_settings)
        return json.dumps(data, indent=2, ensure_ascii=False)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json``, plus ``tokenizer_config.json`` when roles or a maximum length are known."""
        path = super().save(directory)
        config: dict[str, Any] = {f"{r}_token": t for r, t in self._overrides.items()}
        if config or self.model_max_length is not None:
            if self.model_max_length is not None:
                config["model_max_length"] = self.model_max_length
            atomic_write_json(Path(directory) / CONFIG_FILE, config)
        return path


def apply_config_settings(tok: tokenizers.Tokenizer, config: dict[str, Any]) -> None:
    """What ``tokenizer_config.json`` changes in the ids ``transformers`` gives for this file:
    a GPT-2 tokenizer class takes ``add_prefix_space`` from the config (default False)."""
    if config.get("tokenizer_class") in PREFIX_SPACE_FROM_CONFIG and isinstance(tok.model, models.BPE):
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))


def declared_max_length(directory: str | os.PathLike) -> int | None:
    """The longest input a checkpoint declares: ``sentence_bert_config.json`` ``max_seq_length``
    (what sentence-transformers cuts to) over ``tokenizer_config.json`` ``model_max_length``."""
    directory = Path(directory)
    for name, key in ((SENTENCE_CONFIG_FILE, "max_seq_length"), (CONFIG_FILE, "model_max_length")):
        if not (directory / name).is_file():
            continue
        value = read_json(directory / name, error=DataError).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < NO_LIMIT:
            return int(value)
    return None


def config_roles(config: dict[str, Any]) -> dict[str, str]:
    """role -> token from a Hugging Face ``tokenizer_config.json`` (``pad_token``, ``cls_token`` ...)."""
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
