"""The affine map y = x Wᵀ + b of every projection in the models, with a faster path for few rows.

:class:`Linear` is ``nn.Linear`` (same parameters, same state-dict keys, same results up to
float rounding) with one change in *how* the product is computed when a matrix multiplies only a
handful of rows, as in decoding (one row per sequence) or a short prompt:

    y = x Wᵀ + b           what ``nn.Linear`` computes: x is (M, in), W is (out, in)
    yᵀ = W xᵀ + b          the same numbers, computed as the transposed product

On a CPU the BLAS library handles the two very differently when M is small. For x Wᵀ it packs
the large matrix W before multiplying, which costs more than the product itself; for W xᵀ the
large matrix is the streamed operand and only the small xᵀ is packed. Measured on this project's
2-core AMD EPYC (fp32, two threads, weights read from memory, not cache): a GPT-2 feed-forward
matrix (3072 × 768) at M = 8 takes 3.3 ms one way and 1.5 ms the other, GPT-2's LM head
(50257 × 768) 58 ms and 22 ms. From M ≈ 512 on (training batches) the two are even, so the
transposed path is used only for ``FEW_ROWS`` rows or fewer, without gradients, on the CPU in
fp32, with W stored row-major (its usual layout).

One row (decoding a single sequence) is a matrix-vector product, bound by reading W from
memory. With W stored as a contiguous (in, out) matrix (the layout
:func:`glassformer.generation.optimize_for_decoding` gives it for one sequence), the inner
dimension is cut into one contiguous slice per torch thread and the partial products summed:

    y = Σ_j x_j W_jᵀ + b    x_j: the j-th slice of x's in-features, W_j: the matching columns

Each thread then streams its own contiguous block of W (a batched product, ``torch.bmm``). On
the 2-core CPU above this reads GPT-2-124M's layer matrices at 12.6-15.5 GB/s against 7-10 GB/s
for one ``F.linear`` call in either storage, and its LM head at 14.5-19 against 8-12 GB/s
(``benchmarks/row_product.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_ROWS = 64  # at most this many rows (2..FEW_ROWS) take the transposed path
# One row is sliced per thread only for matrices at least this big (2 MiB in fp32): below that,
# the three extra small ops per product cost what the faster read saves (a 10M-parameter GPT's
# 320-wide layers decoded ~5% slower sliced; GPT-2's 768 × 768 W_O reads in 288 against 382 µs).
SLICE_MIN_ELEMENTS = 1 << 19


class Linear(nn.Linear):
    """``nn.Linear`` that multiplies few rows as yᵀ = W xᵀ + b, and one row as a sum of per-thread
    slices of a column-major W, on the CPU (see the module docstring)."""

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
