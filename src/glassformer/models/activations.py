"""ActivationCache: the named activations of one forward pass, and the arithmetic every "why" tool needs.

``out, cache = model.run_with_cache(ids)`` gives a dict of named activations (see
:mod:`glassformer.models.hooks`) that also knows its model, so it can

* ``stack_heads(kind, "z")``          stack one per-head site over the layers: (L, B, H, T, D);
* ``accumulated_resid(pos)``          the residual stream after the embeddings and after each layer;
* ``decompose_resid(pos)``            split the final stream into what each part wrote into it;
* ``apply_final_norm(parts, pos)``    pass parts through the final norm **with its scale frozen**
                                      at the actual stream (so the norm is affine and parts add up);
* ``logit_attrs(parts, token, pos)``  each part's direct contribution to a token's logit.

The decomposition (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"): in a
pre-norm stack in eval mode the stream leaving the last layer is a plain sum,

    x = embed + Σ_l [ Σ_h z_{l,h} W^O_{l,h} + b^O_l  (+ the same for cross-attention) + FFN_l ]

with W^O_{l,h} = W^O[:, h·D:(h+1)·D], the columns of W^O that read head h. The final norm,
LN(x) = γ ⊙ (x − mean(x)) / σ(x) + β (or RMSNorm, γ ⊙ x / rms(x)), is affine once σ (rms) is
frozen at its value for x, so each part's share of a logit is U_w · (γ ⊙ centred(part) / σ), and
the shares plus the constant U_w · β (+ the head's bias) equal the logit exactly. A post-norm stack
(BERT, the paper's Transformer) renormalises the whole stream in every layer: there is no such sum,
and the decomposition refuses rather than give numbers that do not add up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from glassformer.errors import GlassformerError
from glassformer.layers import frozen_norm

if TYPE_CHECKING:  # the model imports this module
    from glassformer.models.family import AttentionSpec, FamilyProtocol


class DecompositionError(GlassformerError, ValueError):
    """A model, cache or request for which the residual stream does not split into parts."""


def decomposition_names(model: FamilyProtocol, stack: str | None = None) -> list[str]:
    """The named activations :meth:`ActivationCache.decompose_resid` reads: pass them as
    ``run_with_cache(..., names=...)`` to keep only what the decomposition needs."""
    stack = stack or model.readout_stack
    n = len(model.stack_module(stack).layers)
    names = [f"{stack}.embed", f"{stack}.{n - 1}.resid_post"]
    for spec in _stack_specs(model, stack):
        names += [spec.activation(i, "z") for i in range(n)]
    names += [f"{stack}.{i}.ffn.out" for i in range(n) if getattr(model.stack_module(stack).layers[i], "ffn", None) is not None]
    return names


def _stack_specs(model: FamilyProtocol, stack: str) -> list[AttentionSpec]:
    return [s for s in model.attentions_spec() if s.stack == stack]


def _attention_module(model: FamilyProtocol, spec: AttentionSpec, layer: int) -> nn.Module:
    block = model.stack_module(spec.stack).layers[layer]
    return block.cross_attn if spec.site == "cross" else block.self_attn


class ActivationCache(dict):
    """A ``{name: tensor}`` dict of one forward pass that knows its model (see the module docstring).

    Position arguments index the T axis of batch row-wise tensors; every result keeps the batch axis B.
    """

    def __init__(self, model: FamilyProtocol, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model = model

    def __getitem__(self, name: str) -> Tensor:
        try:
            return super().__getitem__(name)
        except KeyError:
            raise DecompositionError(
                f"the cache holds no {name!r}; run run_with_cache with names=None or include it in names"
            ) from None

    # -------------------------------------------------------------------------- stacking

    def stack_heads(self, kind: str | None = None, site: str = "z") -> Tensor:
        """A per-head site (``q``, ``k``, ``v``, ``scores``, ``pattern``, ``z``) of one attention
        (default: the model's main one), stacked over its layers: (L, B, H, T, ·)."""
        spec = self.model.attention_spec(kind) if kind is not None else self.model.main_attention
        return torch.stack([self[spec.activation(i, site)] for i in range(spec.n_layers)])  # (L, B, H, T, ·)

    def accumulated_resid(self, pos: int | None = None, stack: str | None = None) -> tuple[list[str], Tensor]:
        """The stream after the embeddings and after each layer: labels ``["embed", "0", ...]`` and a
        tensor (L+1, B, T, C), or (L+1, B, C) at one position."""
        stack = stack or self.model.readout_stack
        n = len(self.model.stack_module(stack).layers)
        parts = [self[f"{stack}.embed"]] + [self[f"{stack}.{i}.resid_post"] for i in range(n)]
        resid = torch.stack(parts)  # (L+1, B, T, C)
        return ["embed"] + [str(i) for i in range(n)], resid if pos is None else resid[:, :, pos]

    # ---------------------------------------------------------------------- decomposition

    def decompose_resid(self, pos: int, stack: str | None = None) -> tuple[list[str], Tensor]:
        """What each part wrote into the stream at ``pos``: labels and a tensor (N, B, C) whose sum over
        N is the stream leaving the last layer. Parts: ``embed``; each head (``decoder.1.3``,
        ``cross.1.0``); each attention's output bias (``decoder.1.attn.bias``); each feed-forward block
        (``decoder.1.ffn``)."""
        model = self.model
        stack = stack or model.readout_stack
        if not getattr(model.config, "norm_first", False):
            raise DecompositionError(
                "the residual stream splits into parts only in a pre-norm stack; this model is post-norm: each "
                "layer's norm rescales the whole stream, so earlier parts do not add up to the output"
            )
        labels, parts = ["embed"], [self[f"{stack}.embed"][:, pos]]  # (B, C)
        specs = _stack_specs(model, stack)
        for i, block in enumerate(model.stack_module(stack).layers):
            for spec in specs:
                mha = _attention_module(model, spec, i)
                z = self[spec.activation(i, "z")][:, :, pos]  # (B, H, D)
                w_o = mha.w_o.weight  # (C, H·D): head h reads columns h·D .. (h+1)·D
                b, h, d = z.shape
                per_head = torch.einsum("bhd,chd->hbc", z, w_o.view(w_o.shape[0], h, d))  # (H, B, C)
                labels += [f"{spec.label}.{i}.{j}" for j in range(h)]
                parts += list(per_head)
                if mha.w_o.bias is not None:
                    labels.append(f"{stack}.{i}.{spec.site}.bias")
                    parts.append(mha.w_o.bias.expand(b, -1))  # (B, C)
            if getattr(block, "ffn", None) is not None:
                labels.append(f"{stack}.{i}.ffn")
                parts.append(self[f"{stack}.{i}.ffn.out"][:, pos])  # (B, C)
        return labels, torch.stack(parts)  # (N, B, C)

    def final_stream(self, pos: int, stack: str | None = None) -> Tensor:
        """The stream that reaches the final norm at ``pos``: (B, C)."""
        stack = stack or self.model.readout_stack
        n = len(self.model.stack_module(stack).layers)
        return self[f"{stack}.{n - 1}.resid_post"][:, pos]

    def apply_final_norm(self, parts: Tensor, pos: int, stack: str | None = None) -> Tensor:
        """``parts`` (..., B, C) through the final norm with its scale frozen at the actual stream at
        ``pos``: γ ⊙ (part − mean(part)) / σ for LayerNorm, γ ⊙ part / rms for RMSNorm. The norm's
        bias β is not added (it is a constant; see :meth:`logit_constant`). No final norm: unchanged."""
        norm = self.model.final_norm(stack)
        if norm is None:
            return parts
        return frozen_norm(norm, self.final_stream(pos, stack))(parts)  # (..., B, C)

    def _unembed_rows(self, tokens: int | Tensor) -> tuple[nn.Linear, Tensor]:
        head = self.model.unembed()
        if head is None or not self.model.readout_is_linear:
            raise DecompositionError(
                "logit attribution needs a linear head after the final norm; "
                + ("this model has no language-model head" if head is None else "this model's head is not linear")
            )
        v = head.weight.shape[0]
        tokens = torch.as_tensor(tokens, device=head.weight.device)
        if tokens.dtype.is_floating_point or ((tokens < 0) | (tokens >= v)).any():
            raise DecompositionError(f"token ids must be integers in [0, {v}), got {tokens.tolist()}")
        return head, tokens

    def logit_attrs(self, parts: Tensor, tokens: int | Tensor, pos: int, stack: str | None = None) -> Tensor:
        """Each part's direct contribution to the logit of ``tokens`` (an id, or one per batch row) at
        ``pos``: parts (N, B, C) -> (N, B). Their sum plus :meth:`logit_constant` is the logit."""
        head, tokens = self._unembed_rows(tokens)
        u = head.weight[tokens].float()  # (B, C) or (C,)
        return (self.apply_final_norm(parts, pos, stack) * u).sum(-1)  # (N, B)

    def logit_constant(self, tokens: int | Tensor, stack: str | None = None) -> Tensor:
        """What no part wrote: U_w · β (the final norm's bias) plus the head's bias for the token."""
        head, tokens = self._unembed_rows(tokens)
        norm = self.model.final_norm(stack)
        const = torch.zeros(tokens.shape, device=head.weight.device)
        if norm is not None and getattr(norm, "bias", None) is not None:
            const = const + head.weight[tokens].float() @ norm.bias.float()
        if head.bias is not None:
            const = const + head.bias[tokens].float()
        return const
