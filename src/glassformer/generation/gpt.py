"""Text generation with a decoder-only model (GPT): prefill once, then one cached step per token.

    ids = generate(model, prompt_ids, max_new_tokens=50, temperature=0.8, top_p=0.95, seed=0)

How a batch of prompts runs:

* **Left padding.** Prompts of different lengths are padded on the left, so every row's newest
  token sits in the last column and one step serves the whole batch. Position ids come from
  the attention mask (cumsum - 1), so padding never shifts a row's positions and each row
  generates exactly what it would generate alone (greedy; seeded sampling draws row i with
  seed ``seed + i``).
* **KV cache.** The prompt is run once (prefill); each later step feeds only the newest token
  and appends its keys and values to a preallocated cache (:mod:`.cache`). ``use_cache=False``
  recomputes the whole context at every step; both give the same tokens.
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from glassformer.generation.cache import new_decoding_cache, select_rows
from glassformer.generation.sampling import (
    apply_repetition_penalty,
    make_generators,
    sample_next,
    validate_sampling,
)

Streamer = Callable[[int, int], None]  # streamer(row, token_id), called once per new token


def window_keep(max_len: int) -> int:
    """How many recent tokens stay in the context after a sliding-window crop."""
    return max(1, max_len - max_len // 4)


def check_max_new_tokens(max_new_tokens: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")


@dataclass
class _Row:
    """One sequence being generated: its real tokens (no padding) and where its window starts."""

    tokens: list[int]
    start: int = 0  # first token of the context window
    new: list[int] = field(default_factory=list)
    done: bool = False
    text: str = ""  # generated text so far (only kept when there are stop strings)
    decoder: object | None = None  # a StreamDecoder, when there are stop strings

    def context(self) -> list[int]:
        return self.tokens[self.start :]


class _Context:
    """The model plus its cache for the rows still running, in batch order."""

    def __init__(self, model, use_cache: bool, pad_id: int, capacity: int) -> None:
        self.model, self.use_cache, self.pad_id = model, use_cache, pad_id
        self.max_len = model.config.max_len
        self.capacity = capacity
        self.device = next(model.parameters()).device
        self.rows: list[int] = []  # which rows the cache holds, in batch order
        self.cache = None
        self.mask: Tensor | None = None  # (A, capacity) bool, True on real tokens; None = no padding
        self.next_pos: Tensor | None = None  # (A,) position id of the next token, when padded
        self.length = 0  # S: positions in the cache, padding included

    def next_logits(self, rows: list[_Row], active: list[int]) -> Tensor:
        """Logits (A, V) for the next token of each active row."""
        rebuild = self.cache is None
        keep = window_keep(self.max_len)
        for i in active:
            r = rows[i]
            if len(r.tokens) - r.start > self.max_len:  # sliding window: drop the oldest tokens
                r.start = len(r.tokens) - keep
                rebuild = True
        if not rebuild and self.length + 1 > self.max_len:
            rebuild = True  # padding left by finished rows pushed the batch past max_len
        if rebuild:
            return self._prefill([rows[i].context() for i in active], active)
        if active != self.rows:
            self._keep(active)
        return self._step([rows[i].tokens[-1] for i in active])

    def _prefill(self, contexts: list[list[int]], active: list[int]) -> Tensor:
        """Run whole contexts, left-padded; keep their keys and values when caching."""
        t = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(contexts), t, dtype=torch.bool)
        for b, c in enumerate(contexts):
            ids[b, t - len(c) :] = torch.tensor(c, dtype=torch.long)
            mask[b, t - len(c) :] = True
        ids, mask = ids.to(self.device), mask.to(self.device)  # (A, T)
        padded = not bool(mask.all())
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0) if padded else None  # (A, T)
        cache = new_decoding_cache(len(self.model.decoder.layers), min(self.capacity, self.max_len)) if self.use_cache else None
        out = self.model(ids, attention_mask=mask if padded else None, position_ids=positions, cache=cache)
        if self.use_cache:
            self.cache, self.rows, self.length = cache, list(active), t
            if padded:
                self.mask = torch.zeros(len(contexts), min(self.capacity, self.max_len), dtype=torch.bool, device=self.device)
                self.mask[:, :t] = mask
                self.next_pos = positions[:, -1] + 1  # (A,)
            else:
                self.mask = self.next_pos = None
        return out.logits[:, -1]  # (A, V)

    def _keep(self, active: list[int]) -> None:
        """Drop finished rows from the cache (they would only cost compute)."""
        where = {r: j for j, r in enumerate(self.rows)}
        index = torch.tensor([where[r] for r in active], dtype=torch.long, device=self.device)
        select_rows(self.cache, index, cross=False)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
            self.next_pos = self.next_pos.index_select(0, index)
        self.rows = list(active)

    def _step(self, last: list[int]) -> Tensor:
        """Feed one new token per row through the cache."""
        ids = torch.tensor(last, dtype=torch.long, device=self.device).unsqueeze(1)  # (A, 1)
        mask = positions = None
        if self.mask is not None:
            self.mask[:, self.length] = True
            mask = self.mask[:, : self.length + 1]  # (A, S + 1)
            positions = self.next_pos.unsqueeze(1)  # (A, 1)
            self.next_pos = self.next_pos + 1
        out = self.model(ids, attention_mask=mask, position_ids=positions, cache=self.cache)
        self.length += 1
        return out.logits[:, -1]  # (A, V)


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
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(input_ids.shape)}")
    return [[t for t, m in zip(ids, ms) if m] for ids, ms in zip(input_ids.tolist(), attention_mask.bool().tolist())]


def generate_lists(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    stop: Sequence[str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    *,
    tokenizer=None,
    streamer: Streamer | None = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    suppress_tokens: Sequence[int] | None = None,
) -> list[list[int]]:
    """The new token ids of each prompt (a list of id lists, no padding); see :func:`generate`."""
    validate_sampling(temperature, top_k, top_p, repetition_penalty)
    check_max_new_tokens(max_new_tokens)
    config = model.config
    if len(prompts) == 0:
        raise ValueError("no prompts to generate from")
    eos_ids = _eos_set(eos_token_id, config.eos_token_id)
    stop = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
    if stop and tokenizer is None:
        raise ValueError("stop strings need tokenizer= to turn the generated ids into text")
    bos = bos_token_id if bos_token_id is not None else config.bos_token_id
    rows = []
    for i, p in enumerate(prompts):
        tokens = [int(t) for t in p]
        if not tokens:
            if bos is None:
                raise ValueError(f"prompt {i} is empty and the model has no bos token to start from")
            tokens = [bos]  # an empty prompt starts from the beginning-of-sequence token
        bad = [t for t in tokens if not 0 <= t < config.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} holds token id {bad[0]}, outside the vocabulary [0, {config.vocab_size})")
        rows.append(_Row(tokens))
    if stop:
        from glassformer.tokenizers import StreamDecoder

        for r in rows:
            r.decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
    pad = _first_not_none(pad_token_id, config.pad_token_id, config.eos_token_id, 0)
    device = next(model.parameters()).device
    # without a seed, sampling uses torch's global generator (not reproducible, as asked)
    generators = make_generators(seed, len(rows), device) if temperature > 0 else None
    longest = max(len(r.tokens) for r in rows)
    ctx = _Context(model, use_cache, pad, capacity=longest + max_new_tokens)
    max_stop = max((len(s) for s in stop), default=0)
    banned = suppress_mask(suppress_tokens, config.vocab_size, device)

    was_training = model.training
    model.eval()  # dropout would make cached and uncached decoding differ
    try:
        for _ in range(max_new_tokens):
            active = [i for i, r in enumerate(rows) if not r.done]
            if not active:
                break
            logits = ctx.next_logits(rows, active).float()  # (A, V)
            if banned is not None:
                logits = logits.masked_fill(banned, float("-inf"))
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, _history(rows, active, device), repetition_penalty)
            gens = [generators[i] for i in active] if generators is not None else None
            next_ids = sample_next(logits, temperature, top_k, top_p, gens).tolist()  # (A,)
            for i, token in zip(active, next_ids):
                r = rows[i]
                r.tokens.append(token)
                r.new.append(token)
                if streamer is not None:
                    streamer(i, token)
                if token in eos_ids:
                    r.done = True
                elif stop:
                    seen = len(r.text)
                    r.text += r.decoder.push(token)
                    tail = r.text[max(0, seen - max_stop + 1) :]
                    r.done = any(s in tail for s in stop)
    finally:
        model.train(was_training)
    return [r.new for r in rows]


@torch.no_grad()
def generate(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    stop: Sequence[str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    *,
    tokenizer=None,
    streamer: Streamer | None = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    suppress_tokens: Sequence[int] | None = None,
) -> Tensor:
    """Continue each prompt of a batch; returns ``input_ids`` followed by the new tokens.

    Args:
        model: a :class:`~glassformer.models.GPT` (anything with its call signature and config).
        input_ids: (B, T) prompt ids, or (T,). Rows may be padded on either side; the
            ``attention_mask`` (B, T), 1 on real tokens, says where. A row with no real token
            (or T = 0) starts from ``bos_token_id`` (the config's when not given); without a
            bos token that is an error.
        max_new_tokens: at most this many tokens per row (>= 1).
        temperature: 0 = greedy (argmax); > 0 samples from softmax(logits / temperature).
        top_k, top_p, repetition_penalty: see :mod:`glassformer.generation.sampling`.
        eos_token_id: stop a row when it produces this id (or any id of a list). None uses
            ``model.config.eos_token_id``; an empty list never stops early.
        stop: stop a row once its generated text contains one of these strings (or this one
            string). The tokens up to and including the one that completed the string are
            kept; cutting the text at the string is the caller's choice (the CLI does).
        seed: makes sampling reproducible; row i draws with its own generator seeded
            ``seed + i``, so a row gives the same sample alone or in any batch.
        use_cache: False recomputes every step from scratch (slow; for checking the cache).
        tokenizer: needed for ``stop`` strings (any glassformer tokenizer).
        streamer: ``streamer(row, token_id)`` is called for every new token as it is chosen;
            :class:`glassformer.generation.TextStreamer` prints text from it.
        bos_token_id, pad_token_id: override the config's ids (the pad id only fills output).
        suppress_tokens: ids that are never generated (e.g. the pad token).

    Returns:
        (B, T + N) ids: ``input_ids`` unchanged, then each row's new tokens (ending with the
        eos id when it stopped there), right-filled with the pad id (config ``pad_token_id``,
        else ``eos_token_id``, else 0) up to N, the longest row's count.
    """
    prompts = prompts_from_tensor(input_ids, attention_mask)
    new = generate_lists(
        model, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_token_id, stop, seed,
        use_cache, tokenizer=tokenizer, streamer=streamer, bos_token_id=bos_token_id, pad_token_id=pad_token_id,
        suppress_tokens=suppress_tokens,
    )
    config = model.config
    pad = _first_not_none(pad_token_id, config.pad_token_id, config.eos_token_id, 0)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    n = max(len(x) for x in new)
    tail = torch.full((len(new), n), pad, dtype=torch.long)
    for b, x in enumerate(new):
        tail[b, : len(x)] = torch.tensor(x, dtype=torch.long)
    return torch.cat([input_ids.long(), tail.to(input_ids.device)], dim=1)  # (B, T + N)


# ------------------------------------------------------------------------------ helpers


def _first_not_none(*values):
    return next(v for v in values if v is not None)


def _eos_set(eos_token_id: int | Sequence[int] | None, default: int | None) -> set[int]:
    if eos_token_id is None:
        return set() if default is None else {default}
    if isinstance(eos_token_id, (list, tuple, set, frozenset)):
        return {int(i) for i in eos_token_id}
    return {int(eos_token_id)}  # an int, or a 0-d tensor / numpy integer


def suppress_mask(ids: Sequence[int] | None, vocab_size: int, device: torch.device) -> Tensor | None:
    """(V,) bool, True on the ids that must never be generated; None when there are none."""
    if not ids:
        return None
    bad = [i for i in ids if not 0 <= int(i) < vocab_size]
    if bad:
        raise ValueError(f"suppress_tokens holds id {bad[0]}, outside the vocabulary [0, {vocab_size})")
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[torch.tensor([int(i) for i in ids], dtype=torch.long, device=device)] = True
    return mask


def _history(rows: list[_Row], active: list[int], device: torch.device) -> Tensor:
    """(A, L) every token each active row has seen (prompt + generated), -1 as padding."""
    longest = max(len(rows[i].tokens) for i in active)
    hist = torch.full((len(active), longest), -1, dtype=torch.long)
    for j, i in enumerate(active):
        hist[j, : len(rows[i].tokens)] = torch.tensor(rows[i].tokens, dtype=torch.long)
    return hist.to(device)
