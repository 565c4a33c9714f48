"""Lay weights out for one-token-at-a-time decoding on a CPU.

A cached decoding step multiplies one row vector per sequence by every weight matrix: a
matrix-vector product whose cost is reading the matrix from memory. ``nn.Linear`` keeps W as
(out, in) rows and computes x Wᵀ, so each output is a dot product along a row; the BLAS
library reads W faster the other way round, as (in, out) rows accumulated into the output (the
layout GPT-2's ``Conv1D`` happens to use). Measured on this project's 2-core CPU (one thread), a
GPT-2-sized LM head (50257 × 768, fp32) takes about 12.6 ms one way and 7.5 ms the other.
bf16 is the opposite: the (in, out) order has no fast kernel there and is ~10x slower, while
the usual (out, in) rows are fast.

That holds for one row. For a few rows (batched decoding, a short prompt) the fastest product
is the other one: yᵀ = W xᵀ with W in the usual (out, in) rows, which
:class:`glassformer.linear.Linear` computes for up to 64 rows (a GPT-2 feed-forward matrix at
8 rows: 1.5 ms, against 3.3 ms for x Wᵀ and 4.6 ms with the (in, out) storage).

:func:`optimize_for_decoding` therefore stores an fp32 weight as the transpose of an (in, out)
contiguous matrix when decoding one sequence (``batch_size=1``) and the matrix widens (out > in:
W_QKV, W_1, the LM head; a narrowing W_2 reads faster in rows, 10.7 against 5.8-7.9 GB/s), and in
the usual row-major order otherwise: for batches and for every other dtype. Shapes, values, parameter objects and weight tying are
unchanged (``weight`` is still (out, in), only its strides differ), so outputs, saving and
loading are unaffected; only the speed of the products changes. Training still works on such a
model, but the usual layout is the better one for it (large matrix-matrix products).
"""

from __future__ import annotations

import torch
from torch import nn


def is_column_major(weight: torch.Tensor) -> bool:
    """True when a 2-D (out, in) weight is stored as a contiguous (in, out) matrix."""
    return weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) == weight.shape[0]


@torch.no_grad()
def optimize_for_decoding(model: nn.Module, batch_size: int = 1) -> nn.Module:
    """Give every ``nn.Linear`` weight of a CPU model the faster layout for decoding
    ``batch_size`` sequences at once: column-major for fp32, one sequence and out > in, row-major
    otherwise. Returns the model.

    Idempotent and cheap when the layout is already right; call it again after changing the
    dtype (``.to()`` keeps the strides) or the batch size. Models on other devices are left as
    they are: their matrix libraries read either layout at full speed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            w = module.weight
            if w.device.type != "cpu" or w.shape[0] == 1 or w.shape[1] == 1:
                continue
            if w.dtype == torch.float32 and batch_size == 1 and w.shape[0] > w.shape[1]:
                if not is_column_major(w):
                    w.data = w.data.t().contiguous().t()  # same (out, in) values, (in, out) storage
            elif not w.is_contiguous():
                w.data = w.data.contiguous()  # back to (out, in) rows
    return model
