"""Text in, token strings out: what the explain tools need from a tokenizer.

Any object with ``encode(text) -> list[int]``, ``decode(ids) -> str`` and ``id_to_token(i)``
works (glassformer's tokenizers, and Hugging Face tokenizers loaded through interop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from glassformer.explain.capture import unwrap


def encode_text(
    tokenizer: Any, text: str, add_special_tokens: bool = True, what: str = "text", max_length: int | None = None
) -> list[int]:
    """Token ids of ``text`` (only its own tokens: never padding); an error naming ``what`` when it
    gives no tokens. With the template, a text longer than ``max_length`` or the checkpoint's
    declared maximum is cut (one warning line), as the model could not read it whole."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    if add_special_tokens and hasattr(tokenizer, "encode_for_model"):
        ids = tokenizer.encode_for_model(text, max_length, what=f"the {what}")
    else:
        try:
            ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        except TypeError:  # a tokenizer without the keyword
            ids = tokenizer.encode(text)
    ids = list(getattr(ids, "ids", ids))
    if not ids:
        raise ValueError(f"the {what} {text!r} gives no tokens; give some text")
    return [int(i) for i in ids]


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """One display string per id: the decoded text of the token when it stands alone (so byte-level
    BPE shows " the", not "Ġthe"), else its vocabulary entry (specials, split UTF-8 bytes)."""
    specials = set(getattr(tokenizer, "special_ids", ()) or ())
    out = []
    for i in ids:
        text = ""
        if i not in specials:
            try:
                text = tokenizer.decode([i])
            except (ValueError, TypeError, KeyError, IndexError):
                text = ""
        if text == "" or "\ufffd" in text:
            try:
                text = str(tokenizer.id_to_token(i))
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                text = f"#{i}"
        out.append(text)
    return out


@dataclass
class Prepared:
    """A text turned into what the model reads. ``tgt_ids`` only for the encoder-decoder."""

    input_ids: list[int]
    tgt_ids: list[int] | None
    tokens: dict[str, list[str]]  # "tokens", or "source" and "target"


def start_token(model: nn.Module, tokenizer: Any) -> int:
    """The decoder's first input for an encoder-decoder."""
    m = unwrap(model)
    start = m.decoder_start_token_id
    if start is None:
        start = getattr(tokenizer, "bos_id", None)
    if start is None:
        raise ValueError("this encoder-decoder has no decoder_start_token_id or bos token to start the target with")
    return int(start)


def prepare(model: nn.Module, tokenizer: Any, text: str, target: str | list[int] | None = None) -> Prepared:
    """Ids and token strings for ``text``. For the encoder-decoder, ``target`` is the decoder's text
    (or ids after the start token); without it the decoder gets only the start token."""
    m = unwrap(model)
    ids = encode_text(tokenizer, text, max_length=getattr(m.config, "max_len", None))
    if not m.needs_target:
        if target is not None:
            raise ValueError(f"a target text is only for the encoder-decoder, not a {type(m).__name__}")
        return Prepared(ids, None, {"tokens": token_strings(tokenizer, ids)})
    tgt = [start_token(model, tokenizer)]
    if isinstance(target, str):
        tgt += encode_text(tokenizer, target, add_special_tokens=False, what="target")
    elif target is not None:
        tgt += [int(i) for i in target]
    return Prepared(ids, tgt, {"source": token_strings(tokenizer, ids), "target": token_strings(tokenizer, tgt)})
