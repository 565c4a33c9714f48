"""The four steps of attention for one query token, computed on a real model and checked.

    step 1  scores  = q · kⱼ          for every key j          (QKᵀ)
    step 2  scaled  = scores / √d_k                             (÷ √d_k)
    step 3  weights = softmax(scaled)  over the visible keys    (the mask hides the rest)
    step 4  z       = Σⱼ weightsⱼ · vⱼ                          (· V)

q, k and v come from the module's own projection (``MultiHeadAttention.project``) of the very
input the model gave it in a real forward pass, caught with a temporary hook. The result z is
then compared with the model's own output of that head (the matching columns of the input to
W^O), and the weights with the model's returned attention weights: ``max_diff`` must be tiny.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from glassformer.attention import causal_mask
from glassformer.explain.capture import (
    as_batch,
    attention_module,
    capture_calls,
    evaluating,
    run_model,
    unwrap,
)
from glassformer.explain.render import format_four_steps, four_steps_table

KindArg = Literal["auto", "encoder-self", "decoder-self", "cross"]
TOLERANCE = 1e-5  # the largest |z - model z| the walk-through accepts


@dataclass
class FourSteps:
    """The numbers of one head's attention for one query token. Vectors are float64 CPU tensors."""

    kind: str  # "encoder-self", "decoder-self" or "cross"
    layer: int
    head: int
    token: int  # index of the query position
    d_k: int  # width of one head (D); the scale is √d_k
    q: Tensor  # (D,) the query vector of the token
    keys: Tensor  # (Tk, D) one key per position looked at
    raw_scores: Tensor  # (Tk,) step 1: q · kⱼ
    scaled_scores: Tensor  # (Tk,) step 2: q · kⱼ / √d_k
    mask: Tensor  # (Tk,) bool, True = may attend; False positions get weight 0
    weights: Tensor  # (Tk,) step 3: softmax over the visible keys; sums to 1
    values: Tensor  # (Tk, D) one value per position
    z: Tensor  # (D,) step 4: Σ weightⱼ vⱼ
    model_z: Tensor  # (D,) the same head's output inside the model's own forward pass
    model_weights: Tensor  # (Tk,) the model's returned attention weights for this row
    max_diff: float  # max |z - model_z|
    weights_max_diff: float  # max |weights - model_weights|

    @property
    def ok(self) -> bool:
        """Both checks within :data:`TOLERANCE`."""
        return self.max_diff <= TOLERANCE and self.weights_max_diff <= TOLERANCE


def resolve_kind(model: nn.Module, kind: KindArg) -> str:
    """``"auto"``: the first attention the model runs (GPT: decoder self, BERT and seq2seq: encoder self)."""
    if kind == "auto":
        return unwrap(model).attentions_spec()[0].kind
    if kind not in ("encoder-self", "decoder-self", "cross"):
        raise ValueError(f"unknown attention kind {kind!r}; choose auto, encoder-self, decoder-self or cross")
    return kind


def _visible(captured_mask: Tensor | None, is_causal: bool, shape: tuple[int, int, int, int], b: int, h: int, i: int) -> Tensor:
    """The (Tk,) row of the mask the module applied to query i of head h in row b: True = may attend."""
    t_q, t_k = shape[2], shape[3]
    row = torch.ones(t_k, dtype=torch.bool)
    if captured_mask is not None:
        row &= torch.broadcast_to(captured_mask, shape)[b, h, i].cpu()  # (Tk,)
    if is_causal and t_q > 1:  # the module adds the causal mask only when several queries ask
        row &= causal_mask(t_q, t_k)[i]
    return row


def four_steps(
    model: nn.Module,
    input_ids: Tensor | list[int],
    layer: int,
    head: int,
    token: int,
    kind: KindArg = "auto",
    tgt_ids: Tensor | list[int] | None = None,
    *,
    batch: int = 0,
    **model_kwargs: Any,
) -> FourSteps:
    """Walk one head of one layer through the four steps for query position ``token``.

    ``input_ids`` is (T,) or (B, T) (the source, for the encoder-decoder, with ``tgt_ids`` the
    decoder input). ``model_kwargs`` go to the model (e.g. ``attention_mask``). The model runs
    once in eval mode; its attention module's input is caught with a temporary hook.
    """
    kind = resolve_kind(model, kind)
    module = attention_module(model, kind, layer)
    if not 0 <= head < module.n_heads:
        raise ValueError(f"head {head} is out of range: this model has heads 0..{module.n_heads - 1}")
    input_ids = as_batch(input_ids)  # (B, T)
    if not 0 <= batch < input_ids.shape[0]:
        raise ValueError(f"batch row {batch} is out of range: the batch has {input_ids.shape[0]} rows")
    with evaluating(model), capture_calls(module) as calls:
        out = run_model(model, input_ids, tgt_ids, return_attentions=True, **model_kwargs)
    if len(calls) != 1 or calls[0].concat_heads is None:
        raise RuntimeError(f"expected one call of the {kind} attention of layer {layer}, caught {len(calls)}")
    call = calls[0]
    t_q = call.x.shape[1]
    if not 0 <= token < t_q:
        raise ValueError(f"token {token} is out of range: the {kind} queries are positions 0..{t_q - 1}")

    with torch.no_grad():
        q, k, v = module.head_inputs(call.x, call.memory)  # q (B, H, T, D); k, v (B, H, S, D), rotated, per query head
    d = module.d_head
    # The walk-through runs in float64 so its own rounding never hides a disagreement.
    q_i = q[batch, head, token].double().cpu()  # (D,)
    keys = k[batch, head].double().cpu()  # (S, D)
    values = v[batch, head].double().cpu()  # (S, D)
    t_k = keys.shape[0]

    raw = keys @ q_i  # step 1: q · kⱼ                     (S,)
    scaled = raw / math.sqrt(d)  # step 2: ÷ √d_k              (S,)
    shape = (call.x.shape[0], module.n_heads, t_q, t_k)  # (B, H, T, S)
    visible = _visible(call.mask, call.is_causal, shape, batch, head, token)  # (S,)
    if visible.any():
        weights = torch.softmax(scaled.masked_fill(~visible, float("-inf")), dim=-1)  # step 3  (S,)
    else:  # a query with nothing to look at gets zeros, as in the model (never NaN)
        weights = torch.zeros_like(scaled)
    z = weights @ values  # step 4: Σ weightⱼ vⱼ              (D,)

    model_z = call.concat_heads[batch, token, head * d : (head + 1) * d].double().cpu()  # (D,)
    model_weights = out.attention(kind, layer)[batch, head, token].double().cpu()  # (S,)
    return FourSteps(
        kind=kind, layer=layer, head=head, token=token, d_k=d, q=q_i, keys=keys, raw_scores=raw,
        scaled_scores=scaled, mask=visible, weights=weights, values=values, z=z, model_z=model_z,
        model_weights=model_weights,
        max_diff=float((z - model_z).abs().max()),
        weights_max_diff=float((weights - model_weights).abs().max()),
    )

__all__ = ["TOLERANCE", "FourSteps", "format_four_steps", "four_steps", "four_steps_table", "resolve_kind"]
