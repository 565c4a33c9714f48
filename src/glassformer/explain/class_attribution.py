"""Each head's and block's share of a class logit, a logit difference, and what removing each part does.

A classifier (BERT with ``num_labels > 0``) reads its final stream h at [CLS] through the pooler
and a linear map: logit_k = W_c[k] · tanh(W_p h + b_p) + b_c[k]. Two things stand between h and
a sum of per-part terms, and this module says how it treats each:

1. **BERT is post-LN.** Every layer ends each sublayer with LN(x + sublayer(x)), which rescales
   the whole stream. With each LayerNorm's scale σ frozen at its actual input, LN is affine:
   LN(x) = γ ⊙ (x − mean(x)) / σ + β, so what a part wrote is carried through every later LN by
   the same map, and the β of each LN is one more part. The parts (embeddings, each head's
   z W^O_h, each output bias, each feed-forward block, each LN's β) then sum **exactly** to h:
   the frozen-scale treatment of direct logit attribution (Elhage et al. 2021) applied to every
   LayerNorm, as Kobayashi et al. (2021) do for BERT's post-LN stream. (A pre-LN stack needs only
   the final norm frozen, as in :mod:`glassformer.explain.attribution`.)
2. **The pooler's tanh.** tanh(z) = m ⊙ z with m = tanh(z) / z (1 where z = 0), so each part's
   share of a pooled unit is m ⊙ (its share of z): DeepLIFT's rescale rule with reference 0
   (Shrikumar et al. 2017). The shares add up to tanh(z) exactly.

So the parts plus the classifier's bias equal the class logit (checked ≤ 1e-4), but these are
direct shares under a stated linearisation, not what removing a part would do: a head also acts
through every later layer. :func:`ablation_effects` gives that instead: the total effect of
zero-ablating each head and each feed-forward block on the logit (one forward pass each), exact
by construction and not a decomposition (the effects do not add up to the logit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from glassformer.explain.attribution import Attribution, AttributionError
from glassformer.layers import frozen_norm

DIRECT_NOTE = ("direct shares: every LayerNorm's scale frozen at its actual input (post-LN: two per layer), the pooler's "
               "tanh shared in proportion to each part's pre-activation (DeepLIFT's rescale rule); the parts sum to the "
               "logit exactly, but a part's share is not what removing it would do (see --method ablation)")
ABLATION_NOTE = ("total effects: the logit minus the logit with that one part zero-ablated (its output set to 0), "
                 "one forward pass each; exact by construction, and not a decomposition: effects do not add up to "
                 "the logit")


def _specs(model: nn.Module, stack: str):
    return [s for s in model.attentions_spec() if s.stack == stack]


def stream_names(model: nn.Module) -> list[str]:
    """The named activations :func:`stream_parts` reads."""
    stack = model.readout_stack
    names = [f"{stack}.embed"]
    for i, block in enumerate(model.stack_module(stack).layers):
        names += [f"{stack}.{i}.resid_pre", f"{stack}.{i}.resid_mid", f"{stack}.{i}.resid_post"]
        for spec in _specs(model, stack):
            names += [spec.activation(i, "z"), spec.activation(i, "out")]
        if getattr(block, "ffn", None) is not None:
            names.append(f"{stack}.{i}.ffn.out")
    return names


def stream_parts(model: nn.Module, cache: dict[str, Tensor], pos: int) -> tuple[list[str], Tensor]:
    """What each part wrote into the stream the head reads at ``pos`` (after the final norm of a
    pre-LN stack), carried through every later LayerNorm with its scale frozen: labels and
    (N, B, C), summing to that stream. An encoder stack without cross-attention (BERT)."""
    stack = model.readout_stack
    specs = _specs(model, stack)
    if any(s.site == "cross" for s in specs):
        raise AttributionError("the class-logit decomposition is for an encoder (BERT); this model has cross-attention")
    post = not model.config.norm_first
    labels, parts = ["embed"], [cache[f"{stack}.embed"][:, pos].float()]  # (B, C)
    for i, block in enumerate(model.stack_module(stack).layers):
        spec = specs[0]
        mha = block.self_attn
        z = cache[spec.activation(i, "z")][:, :, pos].float()  # (B, H, D)
        b, h, d = z.shape
        w_o = mha.w_o.weight.float()  # (C, H·D)
        labels += [f"{spec.label}.{i}.{j}" for j in range(h)]
        parts += list(torch.einsum("bhd,chd->hbc", z, w_o.view(w_o.shape[0], h, d)))  # H × (B, C)
        if mha.w_o.bias is not None:
            labels.append(f"{stack}.{i}.attn.bias")
            parts.append(mha.w_o.bias.float().expand(b, -1))
        if post:  # LN(resid_pre + attn.out), its scale frozen at that input
            norm = block.attn_sub.norm
            x = cache[f"{stack}.{i}.resid_pre"][:, pos] + cache[spec.activation(i, "out")][:, pos]  # (B, C)
            parts = list(frozen_norm(norm, x)(torch.stack(parts)))
            labels, parts = _norm_bias(labels, parts, norm, f"{stack}.{i}.attn.norm.bias", b)
        if getattr(block, "ffn", None) is not None:
            labels.append(f"{stack}.{i}.ffn")
            parts.append(cache[f"{stack}.{i}.ffn.out"][:, pos].float())
            if post:  # LN(resid_mid + ffn.out)
                norm = block.ffn_sub.norm
                x = cache[f"{stack}.{i}.resid_mid"][:, pos] + cache[f"{stack}.{i}.ffn.out"][:, pos]  # (B, C)
                parts = list(frozen_norm(norm, x)(torch.stack(parts)))
                labels, parts = _norm_bias(labels, parts, norm, f"{stack}.{i}.ffn.norm.bias", b)
    final = model.final_norm(stack)
    if final is not None:  # pre-LN: the final norm, frozen at the stream that reaches it
        last = len(model.stack_module(stack).layers) - 1
        parts = list(frozen_norm(final, cache[f"{stack}.{last}.resid_post"][:, pos])(torch.stack(parts)))
        labels, parts = _norm_bias(labels, parts, final, f"{stack}.final_norm.bias", b)
    return labels, torch.stack(parts)  # (N, B, C)


def _norm_bias(labels: list[str], parts: list[Tensor], norm: nn.Module, label: str, b: int):
    beta = getattr(norm, "bias", None)
    if beta is None:
        return labels, parts
    return labels + [label], parts + [beta.float().expand(b, -1)]


@torch.no_grad()
def class_logit_parts(model: nn.Module, ids: Tensor, **forward_kwargs: Any) -> tuple[list[str], Tensor, Tensor]:
    """Every part's direct share of every class logit (module docstring): labels, shares (N, K) for
    batch row 0, and the model's own logits (K,). The last three parts are the pooler's bias, the
    classifier's bias and nothing else; the shares sum over N to the logits."""
    if not model.has_classifier:
        raise AttributionError(f"this {type(model).__name__} has no classification head; --label needs a classifier")
    out, cache = model.run_with_cache(ids, names=stream_names(model), **forward_kwargs)
    labels, parts = stream_parts(model, cache, 0)  # (N, B, C) at [CLS]
    head = model.classifier_head()
    pooler = getattr(model, model.pooler_module, None)
    if pooler is not None:
        w_p = pooler.weight.float()  # (C, C)
        pre = parts @ w_p.T  # (N, B, C) each part's share of W_p h
        b_p = pooler.bias.float() if pooler.bias is not None else torch.zeros_like(pre[0, 0])
        z = pre.sum(0) + b_p  # (B, C) the pooler's pre-activation
        safe = torch.where(z.abs() > 1e-12, z, torch.ones_like(z))
        m = torch.where(z.abs() > 1e-12, torch.tanh(z) / safe, torch.ones_like(z))  # (B, C) tanh(z) / z
        parts = torch.cat([m * pre, (m * b_p).unsqueeze(0)])  # (N + 1, B, C), summing to tanh(z)
        labels = labels + ["pooler bias"]
    shares = parts[:, 0] @ head.weight.float().T  # (N, K)
    bias = head.bias.float() if head.bias is not None else torch.zeros(shares.shape[1])
    shares = torch.cat([shares, bias.unsqueeze(0)])
    logits = model.class_readout(out.last_hidden_state)[0].float()  # (K,)
    return labels + ["classifier bias"], shares, logits


def _remainder_name(label: str) -> str | None:
    if label == "embed":
        return "embeddings"
    if label.endswith(".attn.bias"):
        return "attention output biases"
    if label.endswith("norm.bias"):
        return "LayerNorm biases"
    return label if label in ("pooler bias", "classifier bias") else None


def from_parts(model: nn.Module, by_label: dict[str, float], *, target: int, position: int, logit: float,
               kind: str, method: str, note: str, vs: int | None = None) -> Attribution:
    """An :class:`Attribution` from ``{part label: value}``: heads (L, H), FFN blocks (L,), the rest
    summed into the named remainder (direct method) or left out (ablation effects)."""
    stack = model.readout_stack
    specs = {s.site: s for s in _specs(model, stack)}
    n = len(model.stack_module(stack).layers)

    def table(spec) -> Tensor | None:
        if spec is None:
            return None
        return torch.tensor([[by_label.get(f"{spec.label}.{i}.{h}", 0.0) for h in range(spec.n_heads)] for i in range(n)])

    remainder: dict[str, float] = {}
    for label, value in by_label.items():
        name = _remainder_name(label)
        if name is not None:
            remainder[name] = remainder.get(name, 0.0) + value
    ffn = torch.tensor([by_label.get(f"{stack}.{i}.ffn", 0.0) for i in range(n)])
    cross = specs.get("cross")
    a = Attribution(target, position, logit, table(specs["attn"]), ffn, table(cross), remainder, 0.0,
                    specs["attn"].label, None if cross is None else cross.label, kind=kind, method=method, note=note, vs_id=vs)
    a.check_error = abs(a.total - logit) if method == "direct" else float("nan")
    return a


@torch.no_grad()
def class_attribution(model: nn.Module, ids: Tensor, label: int, vs: int | None = None,
                      **forward_kwargs: Any) -> Attribution:
    """Each head's and block's direct share of class ``label``'s logit (or of logit(label) −
    logit(vs)), summing exactly to it; see the module docstring for the two linearisations."""
    labels, shares, logits = class_logit_parts(model, ids, **forward_kwargs)
    value = shares[:, label] - (shares[:, vs] if vs is not None else 0.0)  # (N,)
    target = float(logits[label] - (logits[vs] if vs is not None else 0.0))
    return from_parts(model, dict(zip(labels, value.tolist())), target=label, position=0, logit=target,
                      kind="class", method="direct", note=DIRECT_NOTE, vs=vs)


@torch.no_grad()
def ablation_effects(model: nn.Module, args: tuple, kwargs: dict[str, Any], metric: Callable[[Any], float], *,
                     target: int, position: int, kind: str, vs: int | None = None) -> Attribution:
    """The total effect of removing each head and each feed-forward block of the readout stack:
    ``metric(clean) − metric(with that part's output zeroed)``, one forward pass per part."""
    from glassformer.explain.hooks import ablation_hooks

    stack = model.readout_stack
    clean = metric(model(*args, **kwargs))
    effects: dict[str, float] = {}
    for spec in _specs(model, stack):
        for ref in spec.heads():
            effects[ref.label] = clean - metric(model.run_with_hooks(*args, hooks=ablation_hooks(model, [ref]), **kwargs))
    for i, block in enumerate(model.stack_module(stack).layers):
        if getattr(block, "ffn", None) is not None:
            effects[f"{stack}.{i}.ffn"] = clean - metric(
                model.run_with_hooks(*args, hooks={f"{stack}.{i}.ffn.out": torch.zeros_like}, **kwargs))
    return from_parts(model, effects, target=target, position=position, logit=clean, kind=kind, method="ablation",
                      note=ABLATION_NOTE, vs=vs)


def difference(a: Attribution, b: Attribution) -> Attribution:
    """The attribution of logit(a's target) − logit(b's target): every part's share subtracted; the
    parts still sum exactly (to the difference of the two logits)."""
    cross = None if a.cross_heads is None else a.cross_heads - b.cross_heads
    remainder = {k: a.remainder.get(k, 0.0) - b.remainder.get(k, 0.0) for k in dict.fromkeys([*a.remainder, *b.remainder])}
    d = Attribution(a.token_id, a.position, a.logit - b.logit, a.heads - b.heads, a.ffn - b.ffn, cross, remainder, 0.0,
                    a.label, a.cross_label, kind=a.kind, method=a.method, note=a.note, vs_id=b.token_id)
    d.check_error = abs(d.total - d.logit)
    return d


__all__ = ["ABLATION_NOTE", "DIRECT_NOTE", "ablation_effects", "class_attribution", "class_logit_parts", "difference",
           "from_parts", "stream_names", "stream_parts"]
