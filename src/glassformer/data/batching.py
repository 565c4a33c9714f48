"""Padding, masks and length-bucketed sampling shared by the datasets.

Every dataset draws its randomness from the ``torch.Generator`` passed to ``batch``, never from
global state, so saving the generator's state saves the position in the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = -100  # label value the loss skips (padding, unmasked MLM positions)


def as_token_array(tokens) -> np.ndarray:
    """A 1-D integer numpy view of ``tokens`` (memmap, ndarray, tensor or list), no copy when possible."""
    if isinstance(tokens, Tensor):
        tokens = tokens.detach().cpu().numpy()
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"tokens must be integer ids, got dtype {array.dtype}")
    return array


def pad(rows: Sequence[Sequence[int]], pad_id: int, value: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad ``rows`` to the longest: ``(ids (B, L), mask (B, L))``, mask 1 on real tokens.

    ``value`` overrides what fills the padding in ``ids`` (e.g. -100 for labels).
    """
    length = max(len(r) for r in rows)
    fill = pad_id if value is None else value
    ids = torch.full((len(rows), length), fill, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(rows), length), dtype=torch.long)  # (B, L)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[b, : len(row)] = 1
    return ids, mask


class BucketSampler:
    """Draw batches of examples of similar length, so little of each batch is padding.

    Examples are sorted by length and cut into buckets of ``bucket_factor * batch_size``
    neighbours. A batch picks a bucket with probability proportional to its size, then distinct
    examples uniformly inside it, so every example is equally likely to be drawn.
    """

    def __init__(self, lengths: Sequence[int], bucket_factor: int = 4) -> None:
        if len(lengths) == 0:
            raise ValueError("no examples to sample from")
        if bucket_factor < 1:
            raise ValueError(f"bucket_factor must be >= 1, got {bucket_factor}")
        # stable sort: equal lengths keep the file order, so the buckets are reproducible
        self.order = torch.as_tensor(np.argsort(np.asarray(lengths), kind="stable"), dtype=torch.long)
        self.bucket_factor = bucket_factor

    def __len__(self) -> int:
        return len(self.order)

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """Indices of ``batch_size`` examples (with replacement only when there are fewer)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self.order)
        if n < batch_size:
            return self.order[torch.randint(0, n, (batch_size,), generator=generator)]
        size = self.bucket_factor * batch_size
        starts = list(range(0, n, size))
        if len(starts) > 1 and n - starts[-1] < batch_size:
            starts.pop()  # a last bucket too small for a batch joins the one before it
        ends = starts[1:] + [n]
        weights = torch.tensor([e - s for s, e in zip(starts, ends)], dtype=torch.float)
        k = int(torch.multinomial(weights, 1, generator=generator))
        inside = torch.randperm(ends[k] - starts[k], generator=generator)[:batch_size]
        return self.order[starts[k] + inside]
