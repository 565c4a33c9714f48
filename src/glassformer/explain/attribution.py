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

from glassformer.explain.hooks import InterventionError, forward_args, model_family


class AttributionError(InterventionError):
    """A model or request for which direct logit attribution is not well defined."""


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

    @property
    def total(self) -> float:
        cross = float(self.cross_heads.sum()) if self.cross_heads is not None else 0.0
        return float(self.heads.sum()) + float(self.ffn.sum()) + cross + sum(self.remainder.values())

    def ranked(self, n: int = 10) -> list[tuple[str, float]]:
        """The largest parts by absolute contribution: ``("head 1.3", 2.5)``, ``("ffn 0", -0.4)``, ..."""
        items = [(f"head {layer}.{h}", float(v)) for (layer, h), v in _cells(self.heads)]
        items += [(f"ffn {layer}", float(v)) for layer, v in enumerate(self.ffn)]
        if self.cross_heads is not None:
            items += [(f"cross {layer}.{h}", float(v)) for (layer, h), v in _cells(self.cross_heads)]
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

    Needs a pre-LN decoder with a linear unembedding: GPT, or an encoder-decoder built pre-LN.
    """
    fam = model_family(model)
    if fam == "bert" or not model.config.norm_first:
        raise AttributionError(
            f"direct logit attribution needs a pre-LN model; this {fam} model is post-LN: each layer's "
            "LayerNorm rescales the whole residual stream, so the output is not a sum of per-head terms"
            + (" (and BERT's MLM head is non-linear)" if fam == "bert" else "")
        )
    decoder = model.decoder
    n_layers, n_heads, d = len(decoder.layers), model.config.n_heads, model.config.d_head
    if not 0 <= token_id < model.config.vocab_size:
        raise AttributionError(f"token id {token_id} is outside the vocabulary [0, {model.config.vocab_size})")
    has_cross = decoder.layers[0].cross_attn is not None
    names = ["decoder.embed", f"decoder.{n_layers - 1}.resid_post"]
    for i in range(n_layers):
        names += [f"decoder.{i}.attn.z"] + ([f"decoder.{i}.ffn.out"] if decoder.layers[i].ffn is not None else [])
        names += [f"decoder.{i}.cross.z"] if has_cross else []
    args, kwargs = forward_args(model, ids, tgt_ids)
    out, cache = model.run_with_cache(*args, names=names, **kwargs, **forward_kwargs)
    t = out.logits.shape[1]
    if not -t <= position < t:
        raise AttributionError(f"position {position} is out of range: the sequence has {t} positions")
    pos = position % t
    unembed = model.lm_head if fam == "gpt" else model.generator
    norm = decoder.final_norm
    # σ frozen at the actual input: the stream that reaches the final norm (the last layer's output)
    resid = cache[f"decoder.{n_layers - 1}.resid_post"][0, pos]  # (C,)
    sigma = torch.sqrt(resid.float().var(unbiased=False) + norm.eps)
    direction = unembed.weight[token_id].float() * norm.weight.float()  # U_w ⊙ γ  (C,)

    def through_norm(parts: Tensor) -> Tensor:  # parts (..., C) -> (...,) contribution to the logit
        parts = parts.float()
        return ((parts - parts.mean(-1, keepdim=True)) / sigma) @ direction

    device = resid.device
    heads = torch.zeros(n_layers, n_heads, device=device)
    cross = torch.zeros(n_layers, n_heads, device=device) if has_cross else None
    ffn = torch.zeros(n_layers, device=device)
    biases = torch.zeros((), device=device)
    for i, layer in enumerate(decoder.layers):
        heads[i] = through_norm(_per_head(cache[f"decoder.{i}.attn.z"][0, :, pos], layer.self_attn, d))
        if layer.ffn is not None:  # attention-only layers contribute no ffn part (it stays 0)
            ffn[i] = through_norm(cache[f"decoder.{i}.ffn.out"][0, pos])
        if layer.self_attn.w_o.bias is not None:
            biases = biases + through_norm(layer.self_attn.w_o.bias)
        if has_cross:
            cross[i] = through_norm(_per_head(cache[f"decoder.{i}.cross.z"][0, :, pos], layer.cross_attn, d))
            if layer.cross_attn.w_o.bias is not None:
                biases = biases + through_norm(layer.cross_attn.w_o.bias)
    remainder = {
        "embeddings": float(through_norm(cache["decoder.embed"][0, pos])),
        "attention output biases": float(biases),
        "final norm bias": float(unembed.weight[token_id].float() @ norm.bias.float()) if norm.bias is not None else 0.0,
    }
    if getattr(unembed, "bias", None) is not None:
        remainder["unembedding bias"] = float(unembed.bias[token_id])
    logit = float(out.logits[0, pos, token_id])
    result = Attribution(token_id, pos, logit, heads.cpu(), ffn.cpu(), None if cross is None else cross.cpu(), remainder, 0.0)
    result.check_error = abs(result.total - logit)
    return result


def _per_head(z: Tensor, mha: nn.Module, d: int) -> Tensor:
    """z (H, D) at one position -> each head's write into the stream, z_h W^O_h: (H, C)."""
    w = mha.w_o.weight  # (C, H·D); head h reads columns h·D .. (h+1)·D
    return torch.stack([z[h] @ w[:, h * d:(h + 1) * d].T for h in range(z.shape[0])])  # (H, C)

