"""Language-modelling datasets: next-token prediction (GPT) and masked tokens (BERT).

Both read random windows from one long stream of token ids (usually the memory-mapped output
of :func:`~glassformer.data.encode_corpus`); ``MLMDataset`` can also take a list of texts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from glassformer.data.batching import IGNORE_INDEX, BucketSampler, as_token_array, pad
from glassformer.errors import DataError
from glassformer.tokenizers import Tokenizer


def _random_windows(tokens: np.ndarray, length: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` windows of ``length`` consecutive tokens at uniform random starts: (B, L)."""
    starts = torch.randint(0, len(tokens) - length + 1, (batch_size,), generator=generator)  # (B,)
    index = starts[:, None] + torch.arange(length)  # (B, L)
    # fancy indexing on a memmap reads only the pages these windows touch
    return torch.from_numpy(tokens[index.numpy()].astype(np.int64))  # (B, L)


def _check_length(tokens: np.ndarray, need: int, context: int, source: str | None) -> None:
    if context <= 0:
        raise ValueError(f"context must be positive, got {context}")
    if len(tokens) < need:
        raise DataError(
            f"{source or 'the corpus'}: {len(tokens)} tokens is shorter than one window of {need} tokens "
            f"(context {context}); give a longer corpus or a smaller --context")


class CausalLMDataset:
    """Random windows of ``context + 1`` tokens for next-token prediction.

    ``batch`` returns ``{"input_ids": (B, T), "labels": (B, T)}`` with ``labels[:, t]`` the token
    after ``input_ids[:, t]``: exactly the arguments of ``GPT.forward``.
    """

    def __init__(self, tokens, context: int, source: str | None = None) -> None:
        self.tokens = as_token_array(tokens)
        self.context = context
        _check_length(self.tokens, context + 1, context, source)

    def __len__(self) -> int:
        """Number of distinct windows."""
        return len(self.tokens) - self.context

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        window = _random_windows(self.tokens, self.context + 1, batch_size, generator)  # (B, T+1)
        return {"input_ids": window[:, :-1], "labels": window[:, 1:]}

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Consecutive non-overlapping windows from the start: the same batches every time."""
        t = self.context
        starts = list(range(0, len(self.tokens) - t, t))
        for i, k in enumerate(range(0, len(starts), batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            window = torch.from_numpy(np.stack(
                [self.tokens[s: s + t + 1].astype(np.int64) for s in starts[k: k + batch_size]]))  # (B, T+1)
            yield {"input_ids": window[:, :-1], "labels": window[:, 1:]}


def mask_tokens(
    input_ids: Tensor,
    maskable: Tensor,
    mask_id: int,
    replacement_ids: Tensor,
    generator: torch.Generator,
    mask_prob: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """BERT's masking (Devlin et al. 2019 §3.1): ``(masked input_ids, labels)``.

    Each ``maskable`` position is chosen with probability ``mask_prob``; a chosen token becomes
    ``mask_id`` 80% of the time, a random id from ``replacement_ids`` 10%, and stays itself 10%.
    Labels hold the original id at chosen positions and -100 elsewhere. A row with maskable
    positions but none chosen gets one, so no row is without a target.
    """
    b, t = input_ids.shape
    chosen = (torch.rand(b, t, generator=generator) < mask_prob) & maskable  # (B, T)
    # rows that drew nothing: choose their highest-scoring maskable position instead
    scores = torch.rand(b, t, generator=generator).masked_fill(~maskable, -1.0)  # (B, T)
    forced = torch.zeros_like(chosen).scatter_(1, scores.argmax(1, keepdim=True), True) & maskable  # (B, T)
    empty = ~chosen.any(1, keepdim=True)  # (B, 1)
    chosen = chosen | (forced & empty)

    roll = torch.rand(b, t, generator=generator)  # (B, T): which of the 80/10/10 cases
    noise = replacement_ids[torch.randint(0, len(replacement_ids), (b, t), generator=generator)]  # (B, T)
    masked = input_ids.clone()
    masked[chosen & (roll < 0.8)] = mask_id
    random_pos = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[random_pos] = noise[random_pos]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))  # (B, T)
    return masked, labels


class MLMDataset:
    """Masked-language-model batches, masked afresh every time (dynamic masking, RoBERTa §4.1).

    ``source`` is a stream of token ids (random windows) or a list of texts (one sequence each,
    padded). Sequences are wrapped as ``bos ... eos`` (BERT's ``[CLS] ... [SEP]``) when the
    tokenizer has both; special tokens and padding are never masked. ``batch`` returns
    ``{"input_ids", "attention_mask", "labels"}``: the arguments of ``BERT.forward``.
    """

    def __init__(self, source, tokenizer: Tokenizer, context: int, mask_prob: float = 0.15,
                 source_name: str | None = None) -> None:
        tokenizer.require("mask", purpose="masked-language modelling")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        self.tokenizer, self.context, self.mask_prob = tokenizer, context, mask_prob
        self.wrap = tokenizer.bos_id is not None and tokenizer.eos_id is not None
        self.body = context - 2 if self.wrap else context  # tokens of text per sequence
        if self.body <= 0:
            raise ValueError(f"context={context} leaves no room for text between bos and eos")
        specials = sorted(tokenizer.special_ids)
        self.special = torch.tensor(specials, dtype=torch.long)
        self.replacement_ids = torch.tensor(
            [i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_ids], dtype=torch.long)
        if isinstance(source, Sequence) and source and isinstance(source[0], str):
            tokenizer.require("pad", purpose="MLM on separate texts (padding)")
            encoded = tokenizer.encode_batch(list(source), add_special_tokens=False)
            self.rows = [ids[: self.body] for ids in encoded if ids]
            if not self.rows:
                raise DataError(f"{source_name or 'the texts'}: every text is empty")
            self.sampler = BucketSampler([len(r) for r in self.rows])
            self.tokens = None
        else:
            self.tokens = as_token_array(source)
            _check_length(self.tokens, self.body, context, source_name)
            self.rows = None

    def _wrap(self, body: Tensor) -> Tensor:
        if not self.wrap:
            return body
        b = body.shape[0]
        bos = torch.full((b, 1), self.tokenizer.bos_id, dtype=torch.long)
        eos = torch.full((b, 1), self.tokenizer.eos_id, dtype=torch.long)
        return torch.cat([bos, body, eos], dim=1)  # (B, T)

    def _sequences(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.tokens is not None:
            ids = self._wrap(_random_windows(self.tokens, self.body, batch_size, generator))  # (B, T)
            return ids, torch.ones_like(ids)
        rows = [self.rows[i] for i in self.sampler.sample(batch_size, generator).tolist()]
        if self.wrap:
            rows = [[self.tokenizer.bos_id, *r, self.tokenizer.eos_id] for r in rows]
        return pad(rows, self.tokenizer.pad_id)

    def mask(self, input_ids: Tensor, attention_mask: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Mask a batch of sequences; the dict ``BERT.forward`` takes."""
        maskable = attention_mask.bool() & ~torch.isin(input_ids, self.special)  # (B, T)
        masked, labels = mask_tokens(input_ids, maskable, self.tokenizer.mask_id, self.replacement_ids,
                                     generator, self.mask_prob)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        ids, attention_mask = self._sequences(batch_size, generator)
        return self.mask(ids, attention_mask, generator)

    def eval_batches(self, batch_size: int, max_batches: int | None = 8, seed: int = 0) -> Iterator[dict[str, Tensor]]:
        """The same masked batches every call (a fixed seed), for a comparable validation loss."""
        generator = torch.Generator().manual_seed(seed)
        for _ in range(max_batches if max_batches is not None else 8):
            yield self.batch(batch_size, generator)
