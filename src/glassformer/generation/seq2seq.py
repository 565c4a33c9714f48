"""Decoding with the encoder-decoder Transformer: greedy, sampled or beam search.

    target = generate_seq2seq(model, src_ids, GenerationConfig(num_beams=4), src_mask=src_mask)

The encoder runs once per source. :class:`EncoderDecoder` is the family's side of the decoding
loop (:mod:`.loop`, where greedy decoding, sampling and beam search live): the decoder runs one
step per target token with a cache; its masked self-attention appends each step's keys and
values, and each layer's cross-attention projects the encoder output (``memory``) into keys and
values on the first step only (``LayerCache.cross_attn``) and reuses them afterwards. Rows of
the same source share their memory, so memory and cross caches are only re-selected when the
set of sources in the batch changes (a source finished, or beams were spread out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from glassformer.generation.cache import new_decoding_cache, select_rows
from glassformer.generation.config import GenerationConfig
from glassformer.generation.loop import (
    Hyp,
    Step,
    Streamer,
    decode_model,
    first_not_none,
    resolve,
    right_pad,
)
from glassformer.io import eval_mode
from glassformer.tokenizers.base import pad_id

log = logging.getLogger(__name__)


def max_new_tokens_limit(model) -> int:
    """How many tokens an output may hold: with its start token it fits the decoder's ``max_len``
    positions (the Hugging Face ``max_length`` rule)."""
    return model.config.max_len - 1


class EncoderDecoder:
    """The encoder output and the decoder cache for the rows still running."""

    def __init__(self, model, src_ids: Tensor, src_mask: Tensor | None, capacity: int,
                 return_attentions: bool = False) -> None:
        self.model = model
        self.vocab_size = model.config.vocab_size
        self.return_attentions = return_attentions
        self.attentions: dict[str, list[Tensor]] | None = None
        self.src_mask = src_mask.bool() if src_mask is not None else None
        self.memory, _ = model.encode(src_ids, self.src_mask)  # (B, S, C), computed once
        self.device = self.memory.device
        self.sources = list(range(src_ids.shape[0]))  # the source of each row
        self.cache = new_decoding_cache(len(model.decoder.layers), capacity)

    def first(self, live: list[Hyp]) -> Tensor:
        start = torch.tensor([h.tokens[-1] for h in live], dtype=torch.long, device=self.device)
        return self._step(start)

    def next(self, index: list[int] | None, tokens: Tensor, live: list[Hyp]) -> Tensor:
        if index is not None:
            where = torch.tensor(index, dtype=torch.long, device=self.device)
            sources = [self.sources[i] for i in index]
            moved = sources != self.sources  # same source in every row: memory and cross caches still fit
            select_rows(self.cache, where, cross=moved)
            if moved:
                self.memory = self.memory.index_select(0, where)
                self.src_mask = self.src_mask.index_select(0, where) if self.src_mask is not None else None
                self.sources = sources
        return self._step(tokens)

    def _step(self, tokens: Tensor) -> Tensor:
        logits, _, self_ws, cross_ws = self.model.decode(tokens.unsqueeze(1), self.memory, self.src_mask, None,
                                                         self.cache, self.return_attentions)  # (A, 1, V)
        if self.return_attentions:
            self.attentions = {"decoder-self": [w[:, :, -1] for w in self_ws], "cross": [w[:, :, -1] for w in cross_ws]}
        return logits[:, -1]  # (A, V)


@torch.no_grad()
def generate_seq2seq_lists(
    model,
    src_ids: Tensor,
    config: GenerationConfig | None = None,
    *,
    src_mask: Tensor | None = None,
    tokenizer=None,
    streamer: Streamer | None = None,
    on_step: Callable[[Step], None] | None = None,
    return_attentions: bool = False,
    beam_search: bool | None = None,
    start_token_id: int | None = None,
    **overrides: Any,
) -> list[list[int]]:
    """The target ids of each source as lists (no start token, no padding); see :func:`generate_seq2seq`."""
    config = resolve(config, overrides)
    if isinstance(src_ids, Tensor) and src_ids.dim() == 1:
        src_ids = src_ids.unsqueeze(0)
        src_mask = src_mask.unsqueeze(0) if src_mask is not None else None
    start = first_not_none(start_token_id, model.decoder_start_token_id)
    if start is None:
        raise ValueError("the model has no decoder start token: set decoder_start_token_id or bos_token_id in its config")
    limit = max_new_tokens_limit(model)
    if config.max_new_tokens > limit:
        log.debug("max_new_tokens=%d: the decoder holds %d positions; generating at most %d",
                  config.max_new_tokens, limit, limit)
        config = config.replace(max_new_tokens=limit)
    with eval_mode(model):  # the family runs the encoder: dropout off for it too
        family = EncoderDecoder(model, src_ids, src_mask, config.max_new_tokens + 1, return_attentions)
        live = [Hyp(i, [int(start)]) for i in range(src_ids.shape[0])]
        return decode_model(model, family, live, config, tokenizer=tokenizer, streamer=streamer, on_step=on_step,
                            beam_search=beam_search)


@torch.no_grad()
def generate_seq2seq(
    model,
    src_ids: Tensor,
    config: GenerationConfig | None = None,
    *,
    src_mask: Tensor | None = None,
    tokenizer=None,
    on_step: Callable[[Step], None] | None = None,
    **overrides: Any,
) -> Tensor:
    """Translate each source: (B, S) ids -> (B, N) target ids, without the start token.

    ``src_mask`` (B, S) is 1 on real source tokens. ``config`` (or keyword overrides of it)
    chooses greedy decoding, sampling (``temperature > 0``, ``top_k``, ``top_p``,
    ``repetition_penalty``, ``seed``) or beam search (``num_beams > 1`` with
    ``length_penalty``). Decoding stops at ``eos_token_id`` (None: the model's; [] never) or
    after ``max_new_tokens`` (capped at ``max_len - 1``: with the start token, the decoder's length).
    ``suppress_tokens`` are never generated (Marian's pad). Each row ends with the eos id when
    one was produced and is right-filled with the pad id (config ``pad_token_id``, else the
    model's, else its ``eos_token_id``, else 0).
    """
    config = resolve(config, overrides)
    rows = generate_seq2seq_lists(model, src_ids, config, src_mask=src_mask, tokenizer=tokenizer, on_step=on_step)
    return right_pad(rows, pad_id(model.config, generation_config=config), max(1, max(len(r) for r in rows)))  # (B, N)
