"""Marian's tokenizer: two SentencePiece models and one shared vocabulary.

A Marian directory holds ``source.spm`` and ``target.spm`` (SentencePiece models for each
language) and ``vocab.json`` (piece -> model id). SentencePiece only cuts text into pieces; the
ids the model knows come from ``vocab.json``, and a piece missing there is ``<unk>``.

Encoding follows ``transformers``' MarianTokenizer step by step, so the ids are the same:

1. split the text around the special tokens written in it (``</s>``, ``<unk>``, ``<pad>``),
   longest match first; those become their own ids;
2. in every other chunk, a leading language code such as ``>>fr<<`` is one token;
3. the rest goes through the source SentencePiece model (which normalises Unicode and spaces);
4. ``</s>`` is appended.

Decoding maps ids back to pieces and lets SentencePiece join them. Like ``transformers``, a
shared vocabulary decodes with the source model (SentencePiece writes pieces it does not know
as they are, so the text is the same either way).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from glassformer.errors import DataError
from glassformer.io import atomic_write, atomic_write_json, atomic_write_text, make_dirs, read_json
from glassformer.tokenizers import Tokenizer
from glassformer.tokenizers.base import length_limit, warn_truncated

SOURCE_SPM, TARGET_SPM, VOCAB, CONFIG = "source.spm", "target.spm", "vocab.json", "tokenizer_config.json"
SPIECE_UNDERLINE = "▁"  # SentencePiece's visible space
LANGUAGE_CODE = re.compile(r">>.*?<<", re.S)  # a target-language tag at the start of a chunk


def is_marian_tokenizer_dir(directory: str | os.PathLike) -> bool:
    d = Path(directory)
    return (d / SOURCE_SPM).is_file() and (d / VOCAB).is_file()


def _load_spm(path: Path):
    try:
        import sentencepiece
    except ImportError:
        raise DataError(f"{path}: reading Marian tokenizers needs sentencepiece (pip install 'glassformer[marian]')") from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise DataError(f"{path}: not a SentencePiece model ({e})") from None
    return sp


class MarianTokenizer(Tokenizer):
    """Source text -> ids and target ids -> text for a Marian translation model.

    ``encode`` tokenises source text (``encode_target`` target text, e.g. training labels);
    ``decode`` turns generated ids into text. Roles: ``pad`` = ``<pad>``, ``eos`` = ``</s>``,
    ``unk`` = ``<unk>``; Marian has no ``bos`` (decoding starts from the model's
    ``decoder_start_token_id``) and no ``mask``.
    """

    kind = "marian"

    def __init__(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        config = read_json(d / CONFIG, error=DataError) if (d / CONFIG).is_file() else {}
        if config.get("separate_vocabs"):
            raise DataError(f"{d / CONFIG}: separate source and target vocabularies are not supported")
        vocab = read_json(d / VOCAB, expect=None, error=DataError)
        if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
            raise DataError(f"{d / VOCAB}: must map pieces to integer ids")
        self.encoder: dict[str, int] = vocab
        self.decoder: dict[int, str] = {v: k for k, v in vocab.items()}
        roles = {"unk": "<unk>", "eos": "</s>", "pad": "<pad>"}
        for role in roles:
            value = config.get(f"{role}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                roles[role] = value
        for role, token in roles.items():
            if token not in vocab:
                raise DataError(f"{d / VOCAB}: the {role} token {token!r} is not in the vocabulary")
        self.special_tokens = roles
        self.source_lang, self.target_lang = config.get("source_lang"), config.get("target_lang")
        limit = config.get("model_max_length", 512)
        self.model_max_length = limit if isinstance(limit, int) and 0 < limit < 10**9 else None
        self.spm_source = _load_spm(d / SOURCE_SPM)
        self.spm_target = _load_spm(d / TARGET_SPM) if (d / TARGET_SPM).is_file() else self.spm_source
        # longest first, so the split takes the longest special token that matches at a position
        specials = sorted(set(roles.values()), key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")

    # ------------------------------------------------------------------ text <-> ids

    def _pieces(self, text: str, sp) -> list[str]:
        pieces: list[str] = []
        specials = set(self.special_tokens.values())
        for chunk in self._special_split.split(text):
            if not chunk:
                continue
            if chunk in specials:
                pieces.append(chunk)
                continue
            if chunk.startswith(">>") and (code := LANGUAGE_CODE.match(chunk)):
                pieces.append(code.group())
                chunk = chunk[code.end():]
            pieces += sp.encode(chunk, out_type=str)
        return pieces

    def _ids(self, text: str, sp, add_special_tokens: bool) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        unk = self.encoder[self.special_tokens["unk"]]
        ids = [self.encoder.get(p, unk) for p in self._pieces(text, sp)]
        return ids + [self.encoder[self.special_tokens["eos"]]] if add_special_tokens else ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of source-language ``text``, ending with ``</s>`` unless ``add_special_tokens=False``."""
        return self._ids(text, self.spm_source, add_special_tokens)

    def encode_for_model(self, text: str, max_length: int | None = None, *, what: str = "the text") -> list[int]:
        """Source ids cut to the smaller of ``max_length`` and ``model_max_length``, keeping the
        final ``</s>`` (as ``transformers`` does with ``truncation=True``), with one warning line."""
        ids = self.encode(text, add_special_tokens=False)
        limit = length_limit(max_length, self.model_max_length)
        if limit is not None and len(ids) + 1 > limit:
            warn_truncated(what, len(ids) + 1, limit)
            ids = ids[: max(limit - 1, 0)]
        return ids + [self.encoder[self.special_tokens["eos"]]]

    def encode_target(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of target-language ``text`` (the target SentencePiece model, the same vocabulary)."""
        return self._ids(text, self.spm_target, add_special_tokens)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special tokens are written out (each followed by a space) unless skipped."""
        ids = self.check_ids(ids)
        specials = set(self.special_tokens.values())
        special_ids = {self.encoder[t] for t in specials}
        out, run = "", []
        for i in ids:
            if skip_special_tokens and i in special_ids:
                continue
            token = self.decoder.get(i) or self.spm_source.IdToPiece(i) or self.special_tokens["unk"]
            if token in specials:  # never let SentencePiece see a special token
                out += self.spm_source.decode_pieces(run) + token + " "
                run = []
            else:
                run.append(token)
        out += self.spm_source.decode_pieces(run)
        return out.replace(SPIECE_UNDERLINE, " ").strip()

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def token_to_id(self, token: str) -> int | None:
        return self.encoder.get(token)

    def id_to_token(self, i: int) -> str:
        if i not in self.decoder:
            raise ValueError(f"token id {i} is not in the vocabulary ({self.vocab_size} entries)")
        return self.decoder[i]

    # ------------------------------------------------------------------ saving

    def config_dict(self) -> dict[str, Any]:
        """The ``tokenizer_config.json`` that ``transformers`` reads next to the files."""
        return {
            "tokenizer_class": "MarianTokenizer",
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "unk_token": self.special_tokens["unk"],
            "eos_token": self.special_tokens["eos"],
            "pad_token": self.special_tokens["pad"],
            "model_max_length": self.model_max_length if self.model_max_length is not None else 512,
            "separate_vocabs": False,
        }

    def to_json(self) -> str:
        """Marian's tokenizer is not a ``tokenizer.json``; this is its ``tokenizer_config.json``."""
        return json.dumps(self.config_dict(), indent=2) + "\n"

    def save(self, directory: str | os.PathLike) -> Path:
        """Write source.spm, target.spm, vocab.json and tokenizer_config.json; returns vocab.json's path."""
        d = make_dirs(directory)
        for name, sp in ((SOURCE_SPM, self.spm_source), (TARGET_SPM, self.spm_target)):
            atomic_write(d / name, sp.serialized_model_proto())
        atomic_write_json(d / VOCAB, self.encoder)
        atomic_write_text(d / CONFIG, self.to_json())
        return d / VOCAB

