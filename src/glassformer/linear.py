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
fp32, with W stored row-major (its usual layout; see
:func:`glassformer.generation.optimize_for_decoding` for the layout a single row prefers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_ROWS = 64  # at most this many rows (2..FEW_ROWS) take the transposed path


class Linear(nn.Linear):
    """``nn.Linear`` that multiplies few rows as yᵀ = W xᵀ + b on the CPU (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        if (
            2 <= rows <= FEW_ROWS
            and w.device.type == "cpu"
            and w.dtype == torch.float32
            and x.dtype == torch.float32
            and w.is_contiguous()
            and not torch.is_grad_enabled()
        ):
            return few_rows_linear(x, w, self.bias)
        return F.linear(x, w, self.bias)


def few_rows_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x (..., in) -> (..., out) as (W xᵀ + b)ᵀ: the product for few rows of x."""
    x2 = x.reshape(-1, x.shape[-1])  # (M, in)
    if b is None:
        y_t = w @ x2.t()  # (out, M)
    else:
        y_t = torch.addmm(b.unsqueeze(1), w, x2.t())  # (out, M) = b + W xᵀ
    return y_t.t().contiguous().view(*x.shape[:-1], w.shape[0])  # (..., out)
