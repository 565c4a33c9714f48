"""The affine map y = x Wᵀ + b of every projection in the models, and the LM head's fused loss.

:class:`Linear` is ``nn.Linear``, plain: the same parameters, state-dict keys and results on every
device, dtype and grad mode. The faster CPU products for decoding (few rows as W xᵀ, one row as
per-thread slices of a column-major W) are an explicit opt-in that prepares a copy of a model:
:func:`glassformer.generation.layout.optimize_for_decoding`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Linear(nn.Linear):
    """``nn.Linear``: y = x Wᵀ + b, W (out, in), b (out,). The one class every projection of the
    models uses, so a tool can find (and swap) them all."""


# ----------------------------------------------------------------------------------------------
# The output projection and its cross-entropy in one step
#
# A language model's last product, logits = h Wᵀ + b, is followed by a softmax over the whole
# vocabulary. Computed the usual way, a training step writes the (N, V) logits, then their log-
# softmax (a second (N, V) tensor), and in the backward pass a zero-filled (N, V) gradient and the
# softmax's gradient (a third and a fourth). For GPT-2 at 1,024 tokens each is 205 MB. The gradient
# of Σ cross-entropy with respect to the logits is known in closed form,
#
#     ∂/∂z_i Σ_n CE(z_n, y_n) = softmax(z_n)_i − [i = y_n]
#
# so it can be made in place, from the logits, as soon as they exist; the two products that carry it
# back (∂/∂h = G W, ∂/∂W = Gᵀ h) then run in the forward pass and the logits are dropped at once.
# Rows are taken in chunks of at most LOGITS_CHUNK_BYTES of logits, so memory stays bounded
# for any batch and vocabulary.

LOGITS_CHUNK_BYTES = 256 * 2**20
# Below this vocabulary the logits are small and the usual path (ATen's fused log-softmax) is
# faster: at V = 65, 2,048 rows, 5.6 against 7.3 ms; at V = 50,257, 1,024 rows, 2.90 against 2.68 s.
FUSED_MIN_VOCAB = 4096


def linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                         ignore_index: int = -100) -> Tensor:
    """Σ over rows with ``labels != ignore_index`` of cross-entropy(h Wᵀ + b, label), in fp32, without
    keeping the logits: h (..., C), weight (V, C), bias (V,) or None, labels (...). The same value and
    gradients as ``F.cross_entropy(F.linear(h, weight, bias).float(), labels, reduction="sum")``.

    With gradients enabled the gradients are computed in the forward pass (see the comment above)
    and held until backward; the result can be back-propagated once. Vocabularies under
    ``FUSED_MIN_VOCAB`` take the usual path.
    """
    h2, y = h.reshape(-1, h.shape[-1]), labels.reshape(-1)  # (N, C), (N,)
    if weight.shape[0] < FUSED_MIN_VOCAB:
        z = F.linear(h2, weight, bias).float()  # (N, V)
        return F.cross_entropy(z, y, ignore_index=ignore_index, reduction="sum")
    if torch.compiler.is_compiling():
        # kept out of the compiled graph (a chunk loop with a data-dependent branch: it runs eagerly
        # inside a compiled model). Disabled here, while tracing, not by a decorator: that would load
        # torch._dynamo on import and add 1-2 s to every command's start-up.
        return torch.compiler.disable(fused_linear_cross_entropy)(h2, weight, bias, y, ignore_index)
    return fused_linear_cross_entropy(h2, weight, bias, y, ignore_index)


def fused_linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                               ignore_index: int) -> Tensor:
    """:func:`linear_cross_entropy` for h (N, C) and labels (N,), always chunked and fused."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias)):
        return LinearCrossEntropy.apply(h, weight, bias, labels, ignore_index)
    total = h.new_zeros((), dtype=torch.float32)
    for _, z, keep, safe in logit_chunks(h, weight, bias, labels, ignore_index):
        total += cross_entropy_sum(z, keep, safe)[0]
    return total


def logit_chunks(h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, ignore_index: int):
    """Yield (first row, fp32 logits (n, V), labels kept (n,), labels with ignored ones set to 0)
    for chunks of at most LOGITS_CHUNK_BYTES of logits."""
    rows = max(1, LOGITS_CHUNK_BYTES // (4 * weight.shape[0]))
    for s in range(0, h.shape[0], rows):
        y = labels[s:s + rows]
        keep = y != ignore_index  # (n,)
        z = F.linear(h[s:s + rows], weight, bias).float()  # (n, V)
        yield s, z, keep, torch.where(keep, y, 0)


def cross_entropy_sum(z: Tensor, keep: Tensor, safe: Tensor) -> tuple[Tensor, Tensor]:
    """Σ over kept rows of logsumexp(z) − z[label], and the logsumexp of every row."""
    lse = torch.logsumexp(z, dim=1)  # (n,)
    z_y = z.gather(1, safe.unsqueeze(1)).squeeze(1)  # (n,) the label's logit
    return torch.where(keep, lse - z_y, 0.0).sum(), lse


class LinearCrossEntropy(torch.autograd.Function):
    """The autograd form of :func:`linear_cross_entropy`: gradients made in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,  # type: ignore[override]
                ignore_index: int) -> Tensor:
        # only the gradients autograd will ask for (a frozen head skips its V × N × C product)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None  # (N, C)
        grad_w = torch.empty_like(weight) if need_w else None  # (V, C)
        grad_b = torch.empty_like(bias) if need_b else None  # (V,)
        total = h.new_zeros((), dtype=torch.float32)
        for s, z, keep, safe in logit_chunks(h, weight, bias, labels, ignore_index):
            loss, lse = cross_entropy_sum(z, keep, safe)
            total += loss
            g = z.sub_(lse.unsqueeze(1)).exp_()  # (n, V) softmax(z), in place of the logits
            g.scatter_add_(1, safe.unsqueeze(1), -keep.unsqueeze(1).to(g.dtype))  # − one-hot(label)
            if not bool(keep.all()):
                g.masked_fill_(~keep.unsqueeze(1), 0.0)  # ignored rows add nothing
            g = g.to(h.dtype)
            rows = slice(s, s + g.shape[0])
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[rows])  # (n, C) = G W
            # the first chunk writes the weight's gradients, later ones add to them
            if grad_w is not None:
                if s == 0:
                    torch.mm(g.t(), h[rows], out=grad_w)  # (V, C) = Gᵀ h
                else:
                    grad_w.addmm_(g.t(), h[rows])
            if grad_b is not None:
                if s == 0:
                    torch.sum(g, 0, out=grad_b)
                else:
                    grad_b += g.sum(0)
        ctx.grads = (grad_h, grad_w, grad_b)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):  # type: ignore[override]
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy's gradients were already used: back-propagate it once")
        grads, ctx.grads = ctx.grads, None
        grad_h, grad_w, grad_b = (g.mul_(grad_total) if g is not None else None for g in grads)
        return grad_h, grad_w, grad_b, None, None
