"""Direct logit attribution: how much each head and each feed-forward block adds to one logit.

In a pre-LN stack (GPT-2 and its kind) the residual stream that reaches the final LayerNorm is a
plain sum of what every part wrote into it (dropout off, eval mode):

    x = embed + Σ_l [ Σ_h z_{l,h} W^O_{l,h} + b^O_l ] + Σ_l FFN_l          (each (C,) at one position)

where W^O_{l,h} = W^O[:, h·D:(h+1)·D] is the slice of W^O that reads head h ("A Mathematical
Framework for Transformer Circuits", Elhage et al. 2021; Olsson et al. 2022 use the same split).

The final LayerNorm, LN(x) = γ ⊙ (x − mean(x)) / σ(x) + β, is not linear in x because of σ(x).
**Here σ is frozen at its value for the actual input x** (the usual convention of direct logit
attribution): with σ a constant, LN is affine, and the logit of token w,

    logit_w = U_w · LN(x) (+ b_w) = Σ_parts  U_w · (γ ⊙ (part − mean(part)) / σ)  +  U_w · β (+ b_w),

splits exactly into one term per part. The terms for the heads (z W^O) and the FFN blocks (their
whole output, bias included) are the attribution; the embeddings, the attention output biases
b^O and the final norm's β (plus the unembedding bias, if any) are the stated remainder.
Everything sums to the model's logit (``check_error``, ≤ 1e-4 in the tests).

This is a *direct* effect: what a part writes straight into the output, not what it does through
later layers. For a post-LN model (BERT, the paper's Transformer) there is no such sum: every
layer ends in a LayerNorm that rescales the whole stream, so earlier parts do not reach the
output additively, and :func:`direct_logit_attribution` refuses rather than give a misleading
table. (BERT's MLM head is also non-linear: dense → GELU → LayerNorm before the unembedding.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from glassformer.explain.capture import model_inputs
from glassformer.explain.hooks import InterventionError
from glassformer.explain.lens import require_readout
from glassformer.models.activations import decomposition_names


class AttributionError(InterventionError):
    """A model or request for which direct logit attribution is not well defined."""


FINAL_NORM_NOTE = "direct effects through the final norm, its scale frozen at the actual input"


@dataclass
class Attribution:
    """Every direct contribution to one logit at one position (batch row 0)."""

    token_id: int
    position: int
    logit: float  # the model's own logit
    heads: Tensor  # (L, H) each self-attention head's direct contribution
    ffn: Tensor  # (L,) each feed-forward block's
    cross_heads: Tensor | None  # (L, H) encoder-decoder attention heads (the encoder-decoder only)
    remainder: dict[str, float]  # embeddings, attention output biases, final norm bias (+ unembedding bias)
    check_error: float  # |sum of everything - logit|
    label: str = "decoder"  # the head labels of ``heads``: f"{label}.{layer}.{head}" (glassformer.models.family)
    cross_label: str | None = None  # and of ``cross_heads``
    kind: str = "token"  # what ``token_id`` is: a "token" of the vocabulary or a "class" of a classifier
    method: str = "direct"  # "direct": shares that sum to the logit; "ablation": total effects (they do not sum)
    note: str = FINAL_NORM_NOTE  # how the numbers were made, in words (printed with them)
    vs_id: int | None = None  # set: the numbers are of logit(token_id) - logit(vs_id)

    @property
    def total(self) -> float:
        cross = float(self.cross_heads.sum()) if self.cross_heads is not None else 0.0
        return float(self.heads.sum()) + float(self.ffn.sum()) + cross + sum(self.remainder.values())

    def ranked(self, n: int = 10) -> list[tuple[str, float]]:
        """The largest parts by absolute contribution: ``("decoder.1.3", 2.5)``, ``("ffn 0", -0.4)``, ...
        (heads by their labels, :class:`~glassformer.models.family.HeadRef`)."""
        items = [(f"{self.label}.{layer}.{h}", float(v)) for (layer, h), v in _cells(self.heads)]
        items += [(f"ffn {layer}", float(v)) for layer, v in enumerate(self.ffn)]
        if self.cross_heads is not None:
            items += [(f"{self.cross_label}.{layer}.{h}", float(v)) for (layer, h), v in _cells(self.cross_heads)]
        items += [(k, v) for k, v in self.remainder.items()]
        return sorted(items, key=lambda kv: -abs(kv[1]))[:n]


def _cells(t: Tensor):
    for layer in range(t.shape[0]):
        for h in range(t.shape[1]):
            yield (layer, h), t[layer, h]


@torch.no_grad()
def direct_logit_attribution(
    model: nn.Module, ids: Tensor, token_id: int, *, position: int = -1, tgt_ids: Tensor | None = None,
    **forward_kwargs: Any,
) -> Attribution:
    """Each head's and each feed-forward block's direct contribution to the logit of ``token_id``
    at ``position`` (default: the last), through the final LayerNorm **with its scale σ frozen at
    the actual input**; plus the stated remainder. See the module docstring for the formula.

    Needs a pre-LN stack read by a linear head: GPT, or an encoder-decoder built pre-LN. The
    arithmetic is the :class:`~glassformer.models.activations.ActivationCache`'s
    (``decompose_resid``, ``logit_attrs``, ``logit_constant``).
    """
    require_readout(model, "direct logit attribution")
    if not model.config.norm_first or not model.readout_is_linear:
        why = [] if model.config.norm_first else ["is post-LN: each layer's LayerNorm rescales the whole residual "
                                                  "stream, so the output is not a sum of per-head terms"]
        why += [] if model.readout_is_linear else ["reads the stream with a non-linear head"]
        raise AttributionError(
            f"direct logit attribution needs a pre-LN model with a linear head; this {type(model).__name__} "
            + " and ".join(why) + " (--method ablation gives each part's total effect instead)"
        )
    v = model.config.vocab_size
    if isinstance(token_id, bool) or not 0 <= int(token_id) < v:
        raise AttributionError(f"token id {token_id} is outside the vocabulary [0, {v})")
    stack = model.readout_stack
    args, kwargs = model_inputs(model, ids, tgt_ids)
    out, cache = model.run_with_cache(*args, names=decomposition_names(model, stack), **kwargs, **forward_kwargs)
    t = out.logits.shape[1]
    if not -t <= position < t:
        raise AttributionError(f"position {position} is out of range: the sequence has {t} positions")
    pos = position % t
    labels, parts = cache.decompose_resid(pos, stack)  # (N, B, C)
    attrs = cache.logit_attrs(parts, token_id, pos, stack)[:, 0].cpu()  # (N,) batch row 0
    by_label = dict(zip(labels, attrs.tolist()))
    specs = {spec.label: spec for spec in model.attentions_spec() if spec.stack == stack}
    n_layers = len(model.stack_module(stack).layers)

    def head_table(spec) -> Tensor:  # (L, H)
        return torch.tensor([[by_label[ref.label] for ref in spec.heads() if ref.layer == i] for i in range(n_layers)])

    self_spec = next(spec for spec in specs.values() if spec.site == "attn")
    cross_spec = next((spec for spec in specs.values() if spec.site == "cross"), None)
    ffn = torch.tensor([by_label.get(f"{stack}.{i}.ffn", 0.0) for i in range(n_layers)])  # attention-only: 0
    head = model.unembed()
    bias = float(head.bias[token_id]) if getattr(head, "bias", None) is not None else None
    remainder = {
        "embeddings": by_label["embed"],
        "attention output biases": sum(a for name, a in by_label.items() if name.endswith(".bias")),
        "final norm bias": float(cache.logit_constant(token_id, stack)) - (bias or 0.0),  # U_w · β
    }
    if bias is not None:
        remainder["unembedding bias"] = bias
    logit = float(out.logits[0, pos, token_id])
    result = Attribution(token_id, pos, logit, head_table(self_spec), ffn,
                         None if cross_spec is None else head_table(cross_spec), remainder, 0.0,
                         self_spec.label, None if cross_spec is None else cross_spec.label)
    result.check_error = abs(result.total - logit)
    norm = model.final_norm(stack)
    result.note = f"direct effects through the final {type(norm).__name__}, its scale frozen at the actual input"
    return result
