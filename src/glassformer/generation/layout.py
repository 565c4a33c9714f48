"""Lay weights out for one-token-at-a-time decoding on a CPU.

A cached decoding step multiplies one row vector per sequence by every weight matrix: a
matrix-vector product whose cost is reading the matrix from memory. ``nn.Linear`` keeps W as
(out, in) rows and computes x Wᵀ, so each output is a dot product along a row; the BLAS
library reads W faster the other way round, as (in, out) rows accumulated into the output (the
layout GPT-2's ``Conv1D`` happens to use), and that storage can be cut into contiguous slices
of the inner dimension, one per thread (:func:`glassformer.linear.split_inner_linear`).

Measured on this project's 2-core CPU, two threads, GPT-2-124M's matrices read from memory
(``benchmarks/row_product.py``): the sliced (in, out) product streams 12.6-15.5 GB/s,
``F.linear`` 7-10 GB/s in either storage; the LM head 14.5-19 GB/s against 8-12. With one
thread there is no slicing, and only the widening matrices (out > in: W_QKV, W_1, the LM head)
read faster as (in, out); a narrowing W_2 reads faster in rows (8.3-9.1 against 6.5 GB/s).
bf16 has no fast kernel for the (in, out) order (~10x slower), while the usual (out, in) rows
are fast.

That holds for one row. For a few rows (batched decoding, a short prompt) the fastest product
is the other one: yᵀ = W xᵀ with W in the usual (out, in) rows, which
:class:`glassformer.linear.Linear` computes for up to 64 rows (a GPT-2 feed-forward matrix at
8 rows: 1.5 ms, against 3.3 ms for x Wᵀ and 4.6 ms with the (in, out) storage).

:func:`optimize_for_decoding` therefore stores an fp32 weight as the transpose of an (in, out)
contiguous matrix when decoding one sequence (``batch_size=1``) if the matrix will be sliced
per thread (several threads, at least 2 MiB) or widens (out > in); otherwise, for batches and
for every other dtype, in the usual row-major order. Shapes, values, parameter objects and
weight tying are unchanged (``weight`` is still (out, in), only its strides differ), so
outputs, saving and loading are unaffected; only the speed of the products changes. Training
still works on such a model, but the usual layout is the better one for it (large
matrix-matrix products).
"""

from __future__ import annotations

import torch
from torch import nn

from glassformer.linear import inner_slices, is_column_major


@torch.no_grad()
def optimize_for_decoding(model: nn.Module, batch_size: int = 1) -> nn.Module:
    """Give every ``nn.Linear`` weight of a CPU model the faster layout for decoding
    ``batch_size`` sequences at once: column-major for fp32 and one sequence where the matrix is
    sliced per thread (:func:`~glassformer.linear.inner_slices`) or widens (out > in), row-major
    otherwise. Returns the model.

    Idempotent and cheap when the layout is already right; call it again after changing the
    dtype (``.to()`` keeps the strides), the batch size or the number of torch threads. Models on
    other devices are left as they are: their matrix libraries read either layout at full speed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            w = module.weight
            if w.device.type != "cpu" or w.shape[0] == 1 or w.shape[1] == 1:
                continue
            column_major = inner_slices(*w.shape) > 1 or w.shape[0] > w.shape[1]  # sliced, or widening
            if w.dtype == torch.float32 and batch_size == 1 and column_major:
                if not is_column_major(w):
                    w.data = w.data.t().contiguous().t()  # same (out, in) values, (in, out) storage
            elif not w.is_contiguous():
                w.data = w.data.contiguous()  # back to (out, in) rows
    return model
