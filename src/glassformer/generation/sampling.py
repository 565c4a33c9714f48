"""Choosing the next token from the model's logits: small pure functions.

Each function takes logits of shape (B, V) — one row of scores over the vocabulary per
sequence — and returns new logits or token ids; nothing is modified in place and nothing is
remembered between calls, so the explain tools can call them one at a time and show what
each step did. The order used by :func:`sample_next` (and by the decoding loops):

    repetition penalty -> temperature -> top-k -> top-p -> softmax -> draw

Filters remove a token by setting its logit to -inf with ``masked_fill`` on a boolean mask
(never by adding a large negative number), so its probability after softmax is exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from glassformer.errors import NonFiniteError
from glassformer.generation.config import GenerationConfig

Generators = torch.Generator | Sequence[torch.Generator] | None


def validate_sampling(
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> None:
    """Raise ValueError naming the first setting that is out of range (the checks of
    :class:`~glassformer.generation.config.GenerationConfig`).

    temperature >= 0 (0 = greedy); top_k None or >= 1; top_p None or in (0, 1];
    repetition_penalty > 0 (1 = off).
    """
    GenerationConfig(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)


def apply_repetition_penalty(logits: Tensor, prev_ids: Tensor, penalty: float) -> Tensor:
    """Make tokens that already occurred less likely (CTRL, Keskar et al. 2019, §4.1).

    A seen token's logit is divided by ``penalty`` when positive and multiplied by it when
    negative, so ``penalty > 1`` always lowers its probability. logits (B, V); prev_ids (B, T)
    holds the ids seen so far per row; negative entries (padding) are ignored.
    """
    if penalty == 1.0 or prev_ids.numel() == 0:
        return logits
    b, v = logits.shape
    valid = prev_ids >= 0  # (B, T)
    counts = torch.zeros(b, v, dtype=torch.int32, device=logits.device)
    counts.scatter_add_(1, prev_ids.clamp(min=0), valid.to(torch.int32))  # (B, V) occurrences
    seen = counts > 0  # (B, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)  # (B, V)
    return torch.where(seen, penalised, logits)


def penalize_seen(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """:func:`apply_repetition_penalty` with the seen tokens given as a (B, V) bool mask, which
    the decoding loop keeps up to date in place instead of rebuilding a history every step."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)  # (B, V)
    return torch.where(seen, penalised, logits)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature. Temperature 0 (greedy) leaves the logits as they are: the argmax
    does not depend on scale, and dividing by zero would give inf - inf = NaN.

    When the division overflows (a tiny temperature such as ``1e-30``), the row's largest logit
    is subtracted first (softmax does not change): the others then go to ``-inf`` instead of the
    largest to ``+inf``, which is the greedy limit rather than NaN probabilities. A temperature
    that rounds to 0 in the logits' dtype (``1e-320``) is the same limit: the largest scores stay
    0 rather than 0 / 0."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature in (0.0, 1.0):
        return logits
    scaled = logits / temperature  # (B, V)
    finite = torch.isfinite(logits)  # (B, V)
    if not bool(torch.isfinite(scaled[finite]).all()):  # overflow, or 0 / 0 from a temperature that underflowed
        top = logits.amax(dim=-1, keepdim=True)  # (B, 1)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # an all -inf row stays -inf
        gap = logits - top  # (B, V), every finite score <= 0
        scaled = torch.where(gap == 0, gap, gap / temperature)  # (B, V), the largest stay 0
    return scaled


def check_finite_scores(logits: Tensor) -> None:
    """Refuse logits holding NaN or +inf (a model whose weights hold NaN/inf, or an overflow):
    sampling from them would fail inside ``torch.multinomial`` and greedy decoding would pick
    arbitrary tokens. ``-inf`` is allowed (a suppressed token)."""
    bad = torch.isnan(logits) | torch.isposinf(logits)  # (B, V)
    if bool(bad.any()):
        raise NonFiniteError("the model's next-token scores are NaN or infinite; its weights (or its input) hold "
                             "NaN/inf values, or a layer overflowed. Check the checkpoint (was training stopped "
                             "by a diverging loss?)")


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept too); k is clamped to V."""
    if k is None:
        return logits
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    k = min(k, logits.shape[-1])
    if k == logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1) the k-th largest score
    return logits.masked_fill(logits < kth, float("-inf"))  # (B, V)


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens
    whose probabilities add up to at least p. The most likely token is always kept."""
    if p is None or p >= 1.0:
        if p is not None and p > 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {p}")
        return logits
    if p <= 0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.float().softmax(dim=-1)  # (B, V)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V) probability of the more likely tokens
    drop_sorted = mass_before >= p  # the first token has mass_before 0 < p: always kept
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def make_generators(seed: int | None, n: int, device: torch.device | str = "cpu") -> list[torch.Generator] | None:
    """One random generator per row, row i seeded with ``seed + i``.

    Row i of a batch then draws exactly the numbers it would draw alone with seed ``seed + i``,
    so batching never changes what a seeded prompt samples.
    """
    if seed is None:
        return None
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]


def filter_logits(logits: Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """temperature -> top-k -> top-p: the scores a token is drawn from (B, V), in fp32."""
    return top_p_filter(top_k_filter(apply_temperature(logits.float(), temperature), top_k), top_p)


def draw(scores: Tensor, generator: Generators = None) -> Tensor:
    """One token per row from softmax(scores): (B, V) -> (B,). ``generator`` is one
    ``torch.Generator`` for the batch or one per row (see :func:`make_generators`)."""
    if bool(torch.isneginf(scores).all(dim=-1).any()):
        raise ValueError("every token is excluded for a row (suppressed, or removed by top-k/top-p); nothing "
                         "can be drawn")
    probs = scores.softmax(dim=-1)  # (B, V), in fp32
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    if len(generator) != probs.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {probs.shape[0]} rows")
    rows = [torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generator)]
    return torch.cat(rows).squeeze(-1)  # (B,)


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: Generators = None,
) -> Tensor:
    """Next token id for each row: logits (B, V) -> ids (B,).

    Temperature 0 picks the argmax (greedy; top-k and top-p cannot change it). Otherwise the
    logits are scaled, filtered and one token is drawn from the softmax. ``generator`` is a
    ``torch.Generator`` for the whole batch or a sequence with one per row (see
    :func:`make_generators`); the same generator state gives the same draw.
    """
    validate_sampling(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(logits.shape)}")
    check_finite_scores(logits)
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    return draw(filter_logits(logits, temperature, top_k, top_p), generator)
