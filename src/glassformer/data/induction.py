"""Repeated random tokens: the data on which induction heads form (Olsson et al., 2022).

Each sequence is random lead letters, a segment of distinct letters, the same segment again,
then random filler:

    lead       segment x (distinct)   x again              filler (random)
    k P q      a S d f G h            a S d f G h          q W e r t y u ...
                                        ^ from here each next token is predictable,
                                          by finding the earlier occurrence of the
                                          current token and copying what followed it

The segment's length and start vary from sequence to sequence, so neither the distance back to
the first copy nor its place is something absolute positions could learn: the way to predict
the repeat is the induction mechanism (a previous-token head in one layer, then a head in the
next that attends to the token *after* the earlier occurrence of the current token).

The lead and the filler never use the segment's letters, and the segment never repeats a letter,
so every repeated token has exactly one earlier occurrence: a perfect induction head puts all of
its attention on one key and scores 1.0 (with letters drawn freely, repeats elsewhere cap the
score well below that).

Tokens are the letters of :data:`ALPHABET`, so the data, the probe sentence and every tool that
takes text (``glassformer heads``, ``attention``, ``--snapshot-attention``) share one
character tokenizer. Sequences are generated at load time from a seed: nothing is stored.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from glassformer.data.batching import IGNORE_INDEX

if TYPE_CHECKING:
    from glassformer.models.activations import ActivationCache

# 32 symbols, one token each: few enough that a small model learns them all in seconds, enough
# that a segment of distinct letters leaves letters over for the lead and the filler
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEF"


class RepeatedTokensDataset:
    """Batches ``{"input_ids", "labels"}`` (B, T) of lead + segment + segment + filler.

    ``token_ids``: the ids to draw from. ``context``: T. The segment length is drawn uniformly
    from ``[min_period, max_period]`` (by default from a quarter of T, at least 4, to half of T,
    at most half the letters: 8 to 16 at T = 32, where 4 to a third of T left the demo's induction
    head forming thousands of steps later, or never, on some seeds; RESULTS.md, issue 28); its
    start from ``[0, max_start]`` (by default anywhere both copies fit).
    ``labels`` are the next tokens; with ``repeated_only`` the positions outside the repeat are
    -100 (for measuring the repeat alone).
    """

    def __init__(self, token_ids: list[int], context: int, min_period: int | None = None, max_period: int | None = None,
                 repeated_only: bool = False, max_start: int | None = None) -> None:
        if len(token_ids) < 4:
            raise ValueError("need at least four token ids: a segment of distinct letters and others around it")
        self.token_ids = torch.tensor(list(token_ids), dtype=torch.long)
        self.context = context
        limit = min((context + 1) // 2, len(token_ids) // 2)  # both copies fit; letters are left for the rest
        self.max_period = min(max_period or limit, limit)
        self.min_period = min(min_period if min_period is not None else max(4, context // 4), self.max_period)
        if self.min_period < 2:
            raise ValueError(f"context {context} is too short for a repeated segment")
        self.repeated_only = repeated_only
        self.max_start = context if max_start is None else max_start

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(sequences (B, T + 1), periods (B,), starts (B,))``: row b holds its segment at
        ``starts[b]`` and again right after it; letters not in the segment everywhere else."""
        n, v = self.context + 1, len(self.token_ids)
        periods = torch.randint(self.min_period, self.max_period + 1, (batch_size,), generator=generator)  # (B,)
        room = (n - 2 * periods).clamp(max=self.max_start)  # (B,) how far the first copy may start
        starts = (torch.rand(batch_size, generator=generator) * (room + 1)).long()  # (B,)
        order = torch.rand(batch_size, v, generator=generator).argsort(-1)  # (B, V) a random order of the letters
        # row b's segment is order[b, :k], the other letters order[b, k:]; each position picks one
        k, s = periods[:, None], starts[:, None]  # (B, 1)
        p = torch.arange(n)[None, :]  # (1, T+1)
        other = k + (torch.rand(batch_size, n, generator=generator) * (v - k)).long()  # (B, T+1) lead and filler
        in_first, in_second = (p >= s) & (p < s + k), (p >= s + k) & (p < s + 2 * k)  # (B, T+1)
        index = torch.where(in_first, p - s, torch.where(in_second, p - s - k, other))  # (B, T+1) into order
        seq = order.gather(1, index)  # (B, T+1)
        return self.token_ids[seq], periods, starts

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        seq, periods, starts = self.sample(batch_size, generator)
        labels = seq[:, 1:].clone()  # (B, T)
        if self.repeated_only:
            labels[~repeat_mask(periods, self.context, starts)] = IGNORE_INDEX
        return {"input_ids": seq[:, :-1], "labels": labels}

    def eval_batches(self, batch_size: int, max_batches: int | None = 8, seed: int = 0) -> Iterator[dict[str, Tensor]]:
        """The same batches every call (a fixed seed)."""
        generator = torch.Generator().manual_seed(seed)
        for _ in range(max_batches if max_batches is not None else 8):
            yield self.batch(batch_size, generator)


def repeat_mask(periods: Tensor, context: int, starts: Tensor | None = None) -> Tensor:
    """(B, T) True at input positions t whose next token is in the second copy and predictable
    by induction: t in [s + k, s + 2k - 2] for a segment of length k starting at s (the current
    token occurred k positions earlier)."""
    t = torch.arange(context)[None, :]  # label t predicts token t + 1
    k = periods[:, None]
    s = torch.zeros_like(k) if starts is None else starts[:, None]
    return (t >= s + k) & (t <= s + 2 * k - 2)  # (B, T)


def induction_scores(
    attentions: Tensor | ActivationCache, periods: Tensor, context: int, starts: Tensor | None = None
) -> Tensor:
    """Per-head induction score: the mean attention from each repeated token to the token right
    after its earlier occurrence (the diagonal ``period - 1`` below the main one). The one
    definition: ``glassformer heads`` scores its random repeats with it too.

    ``attentions``: (L, B, H, T, T) weights of every layer, or the
    :class:`~glassformer.models.activations.ActivationCache` of ``model.run_with_cache`` (its main
    attention's ``pattern``, stacked over the layers); returns (L, H). A head doing induction
    scores near 1; a uniform causal head about 1 / position.
    """
    if not isinstance(attentions, Tensor):
        attentions = attentions.stack_heads(site="pattern")  # (L, B, H, T, T)
    mask = repeat_mask(periods, context, starts)  # (B, T)
    b, t = mask.nonzero(as_tuple=True)  # query positions in the repeat
    keys = t - periods[b] + 1  # the token after the earlier occurrence of token t
    per_query = attentions.permute(1, 3, 4, 0, 2)[b, t, keys]  # (N, L, H): one row per repeated query
    return per_query.mean(0)  # (L, H)


def probe_text(length: int, seed: int = 0) -> str:
    """A readable probe: ``length`` distinct random letters, then the same letters again."""
    rng = random.Random(seed)
    segment = "".join(rng.sample(ALPHABET, min(length, len(ALPHABET))))
    return segment + segment
