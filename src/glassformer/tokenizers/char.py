"""Character-level tokenizer: one id per Unicode code point seen in the training text.

Ids ``0 .. len(specials)-1`` are the special tokens, then the characters in code-point order.
It is saved in ``tokenizer.json`` as our own small JSON object, told apart from a Hugging Face
file by its top-level ``"glassformer"`` field::

    {"glassformer": {"kind": "char", "format_version": 1},
     "specials": ["<pad>", ...], "special_roles": {"pad": "<pad>", ...},
     "chars": ["\\n", " ", "!", ...], "unk": false}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from glassformer.errors import DataError
from glassformer.tokenizers.base import DEFAULT_SPECIALS, ROLE_NAMES, Tokenizer, discover_specials

FORMAT_VERSION = 1


def describe_position(text: str, offset: int) -> str:
    """``line L, column C (character offset N)`` of ``text[offset]``, 1-based line and column."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column} (character offset {offset})"


class CharTokenizer(Tokenizer):
    """``CharTokenizer.train(text)``: a vocabulary of the characters in ``text`` plus specials.

    A character outside the vocabulary is an error naming it and its position, unless the
    tokenizer was built with ``unk=True``, in which case it becomes ``<unk>``.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str], specials: Sequence[str] = DEFAULT_SPECIALS, unk: bool = False,
                 special_roles: dict[str, str] | None = None) -> None:
        chars = list(chars)
        specials = list(specials)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"a character vocabulary holds single characters, got {c!r}")
        for t in specials:
            if not isinstance(t, str) or not t:
                raise ValueError(f"a special token is a non-empty string, got {t!r}")
        if special_roles is not None and not (isinstance(special_roles, dict) and all(
                isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in special_roles.items())):
            raise ValueError(f"special_roles maps role names to tokens, got {special_roles!r}")
        if len(set(chars)) != len(chars) or len(set(specials)) != len(specials):
            raise ValueError("the vocabulary repeats an entry")
        clash = set(specials) & set(chars)
        if clash:
            raise ValueError(f"special token {sorted(clash)[0]!r} is also an ordinary character")
        self.specials = specials
        self.chars = chars
        self._itos = specials + chars
        self._stoi = {s: i for i, s in enumerate(self._itos)}
        # ordinary characters only: a special token is never produced by encoding text
        self._char_ids = {c: i for i, c in enumerate(chars, start=len(specials))}
        self.special_tokens = discover_specials(
            lambda t: self._stoi.get(t) if t in specials else None, special_roles)
        self.unk = unk
        if unk and self.unk_id is None:
            raise ValueError(f"unk=True needs an unknown-token special ({' or '.join(ROLE_NAMES['unk'])})")

    @classmethod
    def train(cls, text: str, unk: bool = False, specials: Sequence[str] = DEFAULT_SPECIALS) -> CharTokenizer:
        """The characters of ``text`` (sorted by code point) after the ``specials``."""
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer.train needs a str, got {type(text).__name__}")
        if not text:
            raise DataError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)), specials=specials, unk=unk)

    # ------------------------------------------------------------------ text <-> ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        try:
            return [self._char_ids[c] for c in text]
        except KeyError:
            return self._encode_slow(text)

    def _encode_slow(self, text: str) -> list[int]:
        ids = []
        for pos, c in enumerate(text):
            i = self._char_ids.get(c)
            if i is None:
                if not self.unk:
                    raise DataError(
                        f"character {c!r} (U+{ord(c):04X}) at {describe_position(text, pos)} is not in the "
                        f"character vocabulary; retrain on text that contains it or use unk=True")
                i = self.unk_id
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = self.check_ids(ids)
        n_specials = len(self.specials)
        itos = self._itos
        if skip_special_tokens:
            return "".join(itos[i] for i in ids if i >= n_specials)
        return "".join(itos[i] for i in ids)

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def token_to_id(self, token: str) -> int | None:
        return self._stoi.get(token)

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < len(self._itos):
            raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self._itos)})")
        return self._itos[i]

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "glassformer": {"kind": "char", "format_version": FORMAT_VERSION},
            "specials": self.specials,
            "special_roles": self.special_tokens,
            "chars": self.chars,
            "unk": self.unk,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=True, indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "tokenizer.json") -> CharTokenizer:
        version = data.get("glassformer", {}).get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"{source}: char tokenizer format_version {version!r}; this glassformer reads {FORMAT_VERSION}")
        for field, kind in (("specials", list), ("chars", list), ("unk", bool)):
            if not isinstance(data.get(field), kind):
                raise DataError(f"{source}: field {field!r} must be a {kind.__name__}")
        try:
            return cls(data["chars"], data["specials"], data["unk"], data.get("special_roles"))
        except ValueError as e:
            raise DataError(f"{source}: {e}") from None
