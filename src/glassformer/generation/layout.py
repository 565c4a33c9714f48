"""Lay weights out for one-token-at-a-time decoding on a CPU.

A cached decoding step multiplies one row vector per sequence by every weight matrix: a
matrix-vector product whose cost is reading the matrix from memory. ``nn.Linear`` keeps W as
(out, in) rows and computes x Wᵀ, so each output is a dot product along a row; the BLAS
library reads W faster the other way round, as (in, out) rows accumulated into the output (the
layout GPT-2's ``Conv1D`` happens to use), and that storage can be cut into contiguous slices
of the inner dimension, one per thread (:func:`split_inner_linear`).

Measured on this project's 2-core CPU, two threads, GPT-2-124M's matrices read from memory
(``benchmarks/row_product.py``): the sliced (in, out) product streams 12.6-15.5 GB/s,
``F.linear`` 7-10 GB/s in either storage; the LM head 14.5-19 GB/s against 8-12. With one
thread there is no slicing, and only the widening matrices (out > in: W_QKV, W_1, the LM head)
read faster as (in, out); a narrowing W_2 reads faster in rows (8.3-9.1 against 6.5 GB/s).
bf16 has no fast kernel for the (in, out) order (~10x slower), while the usual (out, in) rows
are fast.

That holds for one row. For a few rows (batched decoding, a short prompt) the fastest product
is the other one: yᵀ = W xᵀ with W in the usual (out, in) rows, which
:class:`DecodingLinear` computes for up to ``FEW_ROWS`` rows (a GPT-2 feed-forward matrix at
8 rows: 1.5 ms, against 3.3 ms for x Wᵀ and 4.6 ms with the (in, out) storage).

:func:`optimize_for_decoding` therefore stores an fp32 weight as the transpose of an (in, out)
contiguous matrix when decoding one sequence (``batch_size=1``) if the matrix will be sliced
per thread (several threads, at least 2 MiB) or widens (out > in); otherwise, for batches and
for every other dtype, in the usual row-major order. Shapes, values, parameter objects and
weight tying are unchanged (``weight`` is still (out, in), only its strides differ), so
outputs, saving and loading are unaffected; only the speed of the products changes.

It is an explicit step that never touches the caller's model: it returns a prepared copy whose
projections are :class:`DecodingLinear` (the faster products) and which shares every tensor it
does not lay out anew. ``glassformer generate``/``translate`` and :func:`glassformer.load` apply
it; the models themselves compute plain ``nn.Linear`` products on every device.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glassformer.linear import Linear

FEW_ROWS = 64  # at most this many rows (2..FEW_ROWS) take the transposed product
# One row is sliced per thread only for matrices at least this big (2 MiB in fp32): below that,
# the three extra small ops per product cost what the faster read saves (a 10M-parameter GPT's
# 320-wide layers decoded ~5% slower sliced; GPT-2's 768 × 768 W_O reads in 288 against 382 µs).
SLICE_MIN_ELEMENTS = 1 << 19


class DecodingLinear(Linear):
    """``nn.Linear`` for decoding on a CPU, in a model prepared by :func:`optimize_for_decoding`:
    without gradients and in fp32, 2..``FEW_ROWS`` rows are multiplied as yᵀ = W xᵀ + b (the BLAS
    library then packs only the small xᵀ, not W: a GPT-2 feed-forward matrix at 8 rows takes 1.5
    against 3.3 ms) and one row, with a column-major W, as the sum of per-thread slices
    y = Σ_j x_j W_jᵀ + b (each thread streams its own contiguous block of W). Anything else is
    ``F.linear``; every path gives nn.Linear's result up to float rounding."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        fast = not torch.is_grad_enabled() and w.device.type == "cpu" and w.dtype == x.dtype == torch.float32
        if fast and 2 <= rows <= FEW_ROWS and w.is_contiguous():
            return few_rows_linear(x, w, self.bias)
        if fast and rows == 1 and is_column_major(w) and (slices := inner_slices(*w.shape)) > 1:
            return split_inner_linear(x, w, self.bias, slices)
        return F.linear(x, w, self.bias)


def few_rows_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x (..., in) -> (..., out) as (W xᵀ + b)ᵀ: the product for few rows of x."""
    x2 = x.reshape(-1, x.shape[-1])  # (M, in)
    if b is None:
        y_t = w @ x2.t()  # (out, M)
    else:
        y_t = torch.addmm(b.unsqueeze(1), w, x2.t())  # (out, M) = b + W xᵀ
    return y_t.t().contiguous().view(*x.shape[:-1], w.shape[0])  # (..., out)


def is_column_major(w: Tensor) -> bool:
    """True when a 2-D (out, in) weight is stored as a contiguous (in, out) matrix."""
    return w.dim() == 2 and w.stride(0) == 1 and w.stride(1) == w.shape[0]


def inner_slices(n_out: int, n_in: int) -> int:
    """How many slices of the inner dimension one row's product with an (n_out, n_in) matrix is
    cut into: one per torch thread (fewer when ``n_in`` does not divide evenly), none (1) for a
    matrix under ``SLICE_MIN_ELEMENTS``."""
    if n_out * n_in < SLICE_MIN_ELEMENTS:
        return 1
    k = torch.get_num_threads()
    while k > 1 and n_in % k:
        k -= 1
    return k


def split_inner_linear(x: Tensor, w: Tensor, b: Tensor | None, k: int) -> Tensor:
    """One row x (..., in) times a column-major W as k partial products summed:
    y = Σ_j x[j-th slice] · Wᵀ[j-th slice of rows] + b, one slice per thread."""
    n_out, n_in = w.shape
    w_k = w.t().view(k, n_in // k, n_out)  # (k, in/k, out): contiguous slices of the (in, out) storage
    x_k = x.reshape(k, 1, n_in // k)  # (k, 1, in/k)
    y = torch.bmm(x_k, w_k).sum(0)  # (k, 1, out) partial products -> (1, out)
    if b is not None:
        y += b
    return y.view(*x.shape[:-1], n_out)  # (..., out)


def wants_column_major(w: Tensor, batch_size: int) -> bool:
    """The layout rule: column-major for an fp32 CPU matrix decoding one sequence when it is
    sliced per thread or widens (out > in); row-major otherwise."""
    column_major = inner_slices(*w.shape) > 1 or w.shape[0] > w.shape[1]  # sliced, or widening
    return w.dtype == torch.float32 and batch_size == 1 and column_major


@torch.no_grad()
def optimize_for_decoding(model: nn.Module, batch_size: int = 1) -> nn.Module:
    """A copy of ``model`` prepared for decoding ``batch_size`` sequences at once on a CPU; the
    model passed in is left exactly as it was (weights, strides, classes).

    In the copy every ``nn.Linear`` is a :class:`DecodingLinear`, and each CPU weight has the
    faster layout: column-major for fp32 and one sequence where the matrix is sliced per thread
    (:func:`inner_slices`) or widens (out > in), row-major otherwise. Tensors that keep their
    layout are shared with ``model`` (no copy); a re-laid weight is one new tensor, tied wherever
    the original was tied. Prepare again after changing the dtype, the batch size or the number
    of torch threads. Weights on other devices keep their layout: their matrix libraries read
    either at full speed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    memo: dict[int, object] = {id(t): t for t in (*model.parameters(), *model.buffers())}  # shared, not copied
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight
        if w.device.type != "cpu" or w.shape[0] == 1 or w.shape[1] == 1:
            continue
        if wants_column_major(w, batch_size):
            if not is_column_major(w):  # same (out, in) values, (in, out) storage
                memo[id(w)] = nn.Parameter(w.detach().t().contiguous().t(), requires_grad=w.requires_grad)
        elif not w.is_contiguous():  # back to (out, in) rows
            memo[id(w)] = nn.Parameter(w.detach().contiguous(), requires_grad=w.requires_grad)
    prepared = copy.deepcopy(model, memo)
    for module in prepared.modules():
        if type(module) in (nn.Linear, Linear):  # a subclass with its own forward keeps it
            module.__class__ = DecodingLinear  # only forward differs; parameters and keys are the same
    return prepared
