"""Text generation with a decoder-only model (GPT): prefill once, then one cached step per token.

    ids = generate(model, prompt_ids, GenerationConfig(max_new_tokens=50, temperature=0.8, seed=0))
    ids = generate(model, prompt_ids, max_new_tokens=50, num_beams=4)     # keywords override the config

:class:`DecoderOnly` is the family's side of the decoding loop (:mod:`.loop`); greedy decoding,
sampling and beam search are the loop's strategies. How a batch of prompts runs:

* **Left padding.** Prompts of different lengths are padded on the left, so every row's newest
  token sits in the last column and one step serves the whole batch. Position ids come from
  the attention mask (cumsum - 1), so padding never shifts a row's positions and each row
  generates exactly what it would generate alone (greedy; seeded sampling draws row i with
  seed ``seed + i``). The mask and the next position ids live in buffers written in place: a
  step allocates nothing for them.
* **KV cache.** The prompt is run once (prefill); each later step feeds only the newest token
  and appends its keys and values to a preallocated cache (:mod:`.cache`).
  ``use_cache=False`` recomputes the whole context at every step; both give the same tokens.
* **Sliding window.** A model sees at most ``max_len`` positions. When a row's context
  (prompt + generated) would exceed that, its oldest tokens are dropped so that the most recent
  ``max_len - max_len // 4`` remain, and the cache is rebuilt from them (a new prefill, with
  positions counted from the window's start). The model therefore always sees between 3/4 and
  all of ``max_len`` recent tokens, and the re-prefill is paid once every ``max_len // 4``
  tokens rather than at every step. The uncached path applies the same rule.
* **Stopping.** A row stops at an end-of-sequence id, when its generated text contains one of
  the ``stop`` strings (this needs ``tokenizer=``), or after ``max_new_tokens``. Finished rows
  leave the batch, so they cost nothing afterwards.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
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
from glassformer.tokenizers.base import pad_id


def window_keep(max_len: int) -> int:
    """How many recent tokens stay in the context after a sliding-window crop."""
    return max(1, max_len - max_len // 4)


def last_position_keyword(model) -> dict[str, Any]:
    """``{"last_only": True}`` when the model can run only the last position through its LM head
    (a prefill needs the next-token logits of the last position alone: for GPT-2's 50257-word
    head and a 500-token prompt that skips ~99.8% of the head's work), else ``{}``."""
    return {"last_only": True} if "last_only" in inspect.signature(model.forward).parameters else {}


class DecoderOnly:
    """A GPT and its cache for the rows still running, in batch order."""

    def __init__(self, model, use_cache: bool, pad_id: int, capacity: int, return_attentions: bool = False) -> None:
        self.model, self.use_cache, self.pad_id = model, use_cache, pad_id
        self.max_len = model.config.max_len
        self.vocab_size = model.config.vocab_size
        self.capacity = min(capacity, self.max_len)
        self.device = next(model.parameters()).device
        self.return_attentions = return_attentions
        self.attentions: dict[str, list[Tensor]] | None = None
        self.prefill_kw = last_position_keyword(model)
        self.cache = None
        self.mask: Tensor | None = None  # (A, capacity) bool, True on real tokens; None = no padding
        self.next_pos: Tensor | None = None  # (A,) position id of the next token, when padded
        self.length = 0  # S: positions in the cache, padding included

    def first(self, live: list[Hyp]) -> Tensor:
        self._slide(live)
        return self._prefill(live)

    def next(self, index: list[int] | None, tokens: Tensor, live: list[Hyp]) -> Tensor:
        rebuild = self._slide(live) or not self.use_cache
        if not rebuild and self.length + 1 > self.capacity:
            rebuild = True  # padding left by finished rows pushed the batch past the cache
        if rebuild:
            return self._prefill(live)
        if index is not None:
            self._keep(index)
        return self._step(tokens)

    def _slide(self, live: list[Hyp]) -> bool:
        """Sliding window: drop the oldest tokens of rows that outgrew max_len; True if any did."""
        moved = False
        for h in live:
            if len(h.tokens) - h.start > self.max_len:
                h.start = len(h.tokens) - window_keep(self.max_len)
                moved = True
        return moved

    def _prefill(self, live: list[Hyp]) -> Tensor:
        """Run whole contexts, left-padded; keep their keys and values when caching."""
        contexts = [h.tokens[h.start :] for h in live]
        t = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(contexts), t, dtype=torch.bool)
        for b, c in enumerate(contexts):
            ids[b, t - len(c) :] = torch.tensor(c, dtype=torch.long)
            mask[b, t - len(c) :] = True
        ids, mask = ids.to(self.device), mask.to(self.device)  # (A, T)
        padded = any(len(c) < t for c in contexts)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0) if padded else None  # (A, T)
        cache = new_decoding_cache(len(self.model.decoder.layers), self.capacity) if self.use_cache else None
        out = self.model(ids, attention_mask=mask if padded else None, position_ids=positions, cache=cache,
                         return_attentions=self.return_attentions, **self.prefill_kw)
        self._record(out)
        if self.use_cache:
            self.cache, self.length = cache, t
            if padded:
                self.mask = torch.zeros(len(contexts), self.capacity, dtype=torch.bool, device=self.device)
                self.mask[:, :t] = mask
                self.next_pos = positions[:, -1] + 1  # (A,)
            else:
                self.mask = self.next_pos = None
        return out.logits[:, -1]  # (A, V)

    def _keep(self, index: list[int]) -> None:
        """Keep cache rows ``index``: drop finished rows, or follow the beams' origins."""
        where = torch.tensor(index, dtype=torch.long, device=self.device)
        select_rows(self.cache, where, cross=False)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, where)
            self.next_pos = self.next_pos.index_select(0, where)

    def _step(self, tokens: Tensor) -> Tensor:
        """Feed one new token per row through the cache."""
        mask = positions = None
        if self.mask is not None:
            self.mask[:, self.length] = True  # written in place: no new mask per step
            mask = self.mask[:, : self.length + 1]  # (A, S + 1) view
            positions = self.next_pos.unsqueeze(1)  # (A, 1) view
        out = self.model(tokens.unsqueeze(1), attention_mask=mask, position_ids=positions, cache=self.cache,
                         return_attentions=self.return_attentions)  # tokens (A,) -> (A, 1)
        if self.next_pos is not None:
            self.next_pos.add_(1)  # after the call: positions was a view of it
        self.length += 1
        self._record(out)
        return out.logits[:, -1]  # (A, V)

    def _record(self, out) -> None:
        if self.return_attentions:
            self.attentions = {"decoder-self": [a.weights[:, :, -1] for a in out.attentions]}  # L x (A, H, Tk)


def prompts_from_tensor(input_ids: Tensor, attention_mask: Tensor | None) -> list[list[int]]:
    """Each row's real token ids (mask 1), whatever side the padding was on."""
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor of shape (B, T), got {input_ids.dtype} {tuple(input_ids.shape)}")
    if attention_mask is None:
        return input_ids.tolist()
    if attention_mask.dim() == 1:
        attention_mask = attention_mask.unsqueeze(0)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(input_ids.shape)}")
    return [[t for t, m in zip(ids, ms) if m] for ids, ms in zip(input_ids.tolist(), attention_mask.bool().tolist())]


@torch.no_grad()
def generate_lists(
    model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    *,
    tokenizer=None,
    streamer: Streamer | None = None,
    on_step: Callable[[Step], None] | None = None,
    return_attentions: bool = False,
    beam_search: bool | None = None,
    **overrides: Any,
) -> list[list[int]]:
    """The new token ids of each prompt (a list of id lists, no padding); see :func:`generate`."""
    config = resolve(config, overrides)
    c = model.config
    if len(prompts) == 0:
        raise ValueError("no prompts to generate from")
    bos = first_not_none(config.bos_token_id, c.bos_token_id)
    live = []
    for i, p in enumerate(prompts):
        tokens = [int(t) for t in p]
        if not tokens:
            if bos is None:
                raise ValueError(f"prompt {i} is empty and the model has no bos token to start from")
            tokens = [bos]  # an empty prompt starts from the beginning-of-sequence token
        bad = [t for t in tokens if not 0 <= t < c.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} holds token id {bad[0]}, outside the vocabulary [0, {c.vocab_size})")
        live.append(Hyp(i, tokens))
    longest = max(len(h.tokens) for h in live)
    family = DecoderOnly(model, config.use_cache, pad_id(c, generation_config=config), longest + config.max_new_tokens,
                         return_attentions)
    return decode_model(model, family, live, config, tokenizer=tokenizer, streamer=streamer, on_step=on_step,
                        beam_search=beam_search)


@torch.no_grad()
def generate(
    model,
    input_ids: Tensor,
    config: GenerationConfig | None = None,
    *,
    attention_mask: Tensor | None = None,
    tokenizer=None,
    streamer: Streamer | None = None,
    on_step: Callable[[Step], None] | None = None,
    **overrides: Any,
) -> Tensor:
    """Continue each prompt of a batch; returns ``input_ids`` followed by the new tokens.

    Args:
        model: a :class:`~glassformer.models.GPT` (anything with its call signature and config).
        input_ids: (B, T) prompt ids, or (T,). Rows may be padded on either side; the
            ``attention_mask`` (B, T), 1 on real tokens, says where. A row with no real token
            (or T = 0) starts from the bos token (the config's, else the model's); without
            one that is an error.
        config: the decoding settings (:class:`GenerationConfig`; None = the defaults: greedy,
            64 tokens). Keyword ``overrides`` (``max_new_tokens=10``, ``num_beams=4``, ...)
            replace single fields. ``eos_token_id`` None uses the model's; ``[]`` never stops
            early. Stop strings keep the tokens up to and including the one that completed
            the string; cutting the text at the string is the caller's choice (the CLI does).
            A seed gives row i its own generator seeded ``seed + i``, so a row gives the same
            sample alone or in any batch.
        tokenizer: needed for ``stop`` strings (any glassformer tokenizer).
        streamer: ``streamer(row, token_id)`` is called for every new token as it is chosen;
            :class:`glassformer.generation.TextStreamer` prints text from it (not with beams).
        on_step: called with a :class:`~glassformer.generation.loop.Step` after each choice.

    Returns:
        (B, T + N) ids: ``input_ids`` unchanged, then each row's new tokens (ending with the
        eos id when it stopped there), right-filled with the pad id (config ``pad_token_id``,
        else the model's, else its ``eos_token_id``, else 0) up to N, the longest row's count.
    """
    config = resolve(config, overrides)
    prompts = prompts_from_tensor(input_ids, attention_mask)
    new = generate_lists(model, prompts, config, tokenizer=tokenizer, streamer=streamer, on_step=on_step)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    new_ids = right_pad(new, pad_id(model.config, generation_config=config))  # (B, N)
    return torch.cat([input_ids.long(), new_ids.to(input_ids.device)], dim=1)  # (B, T + N)
