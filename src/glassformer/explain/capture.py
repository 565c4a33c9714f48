"""Attention capture: find an attention module, run the model once, and read what it saw.

Everything here is temporary: forward hooks live only inside a ``with`` block and are removed
even when the forward raises, and weights come from ``return_attentions=True``. Nothing is
ever stored on a module (DESIGN.md: "attention weights are returned when asked for").

Every family is asked through its protocol (:mod:`glassformer.models.family`): which attentions it
has, how its forward reads ids (``model.forward_inputs``), so the walk-through, the heatmaps and the
viewer work on GPT, BERT and the encoder-decoder alike without naming them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glassformer.attention import MultiHeadAttention
from glassformer.io import eval_mode, unwrap_model
from glassformer.models.family import FamilyProtocol
from glassformer.models.outputs import AttentionKind, ModelOutput

# ------------------------------------------------------------------------ model anatomy


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under a DDP wrapper (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    m = unwrap_model(model)
    if not isinstance(m, FamilyProtocol):
        kind = getattr(getattr(m, "config", None), "model_type", None)
        raise TypeError(f"not a glassformer model (model_type {kind!r}); load it with glassformer.loading")
    return m


def default_kind(model: nn.Module) -> AttentionKind:
    """The attention a figure shows unless told: cross-attention where there is one (the alignment
    people look for), else the model's main attention."""
    m = unwrap(model)
    kinds = [spec.kind for spec in m.attentions_spec()]
    return "cross" if "cross" in kinds else m.main_attention.kind


def attention_module(model: nn.Module, kind: str, layer: int) -> MultiHeadAttention:
    """The :class:`MultiHeadAttention` that computes ``kind`` attention in ``layer``."""
    m = unwrap(model)
    spec = m.attention_spec(kind)
    if not 0 <= layer < spec.n_layers:
        raise ValueError(f"layer {layer} is out of range: the {kind} stack has layers 0..{spec.n_layers - 1}")
    block = m.stack_module(spec.stack).layers[layer]
    return block.cross_attn if spec.site == "cross" else block.self_attn


# --------------------------------------------------------------------------- running it


def as_batch(ids: Tensor | Sequence[int], name: str = "input_ids") -> Tensor:
    """A (T,) list/tensor or a (B, T) tensor -> a (B, T) long tensor."""
    t = ids if isinstance(ids, Tensor) else torch.tensor([int(i) for i in ids], dtype=torch.long)
    if t.dim() == 1:
        t = t.unsqueeze(0)  # (1, T)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (T,) or (B, T), got {tuple(t.shape)}")
    return t


def model_inputs(
    model: nn.Module, input_ids: Tensor | Sequence[int], tgt_ids: Tensor | Sequence[int] | None = None,
    attention_mask: Tensor | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of one forward pass (``model.forward_inputs``) from ids given as lists or
    (T,) / (B, T) tensors, moved to the model's device. ``tgt_ids``: the encoder-decoder's decoder input."""
    m = unwrap(model)
    device = next(m.parameters()).device
    tgt = None if tgt_ids is None else as_batch(tgt_ids, "tgt_ids").to(device)
    return m.forward_inputs(as_batch(input_ids).to(device), tgt, attention_mask)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout: the numbers must be reproducible) and no_grad; restores the mode."""
    with eval_mode(model), torch.no_grad():
        yield model


def run_model(
    model: nn.Module, input_ids: Tensor | Sequence[int], tgt_ids: Tensor | Sequence[int] | None = None,
    return_attentions: bool = True, **model_kwargs: Any
) -> ModelOutput:
    """One forward pass (call inside :func:`evaluating`); see :func:`model_inputs`."""
    args, kwargs = model_inputs(model, input_ids, tgt_ids)
    return model(*args, return_attentions=return_attentions, **kwargs, **model_kwargs)


@dataclass
class CapturedCall:
    """What one call of a MultiHeadAttention received, and what it fed W^O."""

    x: Tensor  # (B, T, C) the query-side input, after any pre-LN
    memory: Tensor | None  # (B, S, C) the encoder output, for cross-attention
    mask: Tensor | None  # bool, broadcastable to (B, H, T, S); True = may attend
    is_causal: bool  # whether the module added the causal mask itself
    concat_heads: Tensor | None = None  # (B, T, C) = Concat(head_1..head_H), the input of W^O


@dataclass
class _Recorder:
    calls: list[CapturedCall] = field(default_factory=list)


@contextmanager
def capture_calls(module: MultiHeadAttention) -> Iterator[list[CapturedCall]]:
    """Record each call of ``module`` (its inputs and its per-head output) while inside the block.

    Two temporary hooks: one on the module (its arguments), one on ``w_o`` (its input is the
    concatenation of every head's z, so head h is columns h·D .. (h+1)·D). Both are removed on exit.
    """
    rec = _Recorder()
    signature = inspect.signature(module.forward)

    def on_call(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        rec.calls.append(CapturedCall(a["x"].detach(), _detach(a.get("memory")), _detach(a.get("mask")), bool(a.get("is_causal"))))

    def on_w_o(_mod: nn.Module, args: tuple) -> None:
        if rec.calls and rec.calls[-1].concat_heads is None:
            rec.calls[-1].concat_heads = args[0].detach()  # (B, T, C)

    handles = [
        module.register_forward_pre_hook(on_call, with_kwargs=True),
        module.w_o.register_forward_pre_hook(on_w_o),
    ]
    try:
        yield rec.calls
    finally:
        for h in handles:
            h.remove()


def _detach(t: Tensor | None) -> Tensor | None:
    return t.detach() if isinstance(t, Tensor) else None


# ------------------------------------------------------------------------ attention sets


@dataclass
class AttentionSet:
    """Every attention weight of one forward pass, for batch row 0, as float32 numpy.

    ``maps[kind]`` is (L, H, Tq, Tk). ``tokens`` holds the token strings of each stream:
    ``"tokens"`` for GPT/BERT, ``"source"`` and ``"target"`` for the encoder-decoder;
    ``streams[kind]`` names the streams of its rows and columns (``AttentionSpec.queries/keys``).
    """

    family: str  # the config's model_type, for display
    maps: dict[str, np.ndarray]
    tokens: dict[str, list[str]]
    streams: dict[str, tuple[str, str]]

    def q_tokens(self, kind: str) -> list[str]:
        """Token strings of the positions that ask (rows)."""
        return self.tokens[self.streams[kind][0]]

    def k_tokens(self, kind: str) -> list[str]:
        """Token strings of the positions looked at (columns)."""
        return self.tokens[self.streams[kind][1]]

    def get(self, kind: str) -> np.ndarray:
        if kind not in self.maps:
            raise ValueError(f"no {kind} attention here; have {', '.join(self.maps)}")
        return self.maps[kind]


def streams_of(model: nn.Module) -> dict[str, tuple[str, str]]:
    """``{kind: (query stream, key stream)}`` of every attention of the model."""
    return {spec.kind: (spec.queries, spec.keys) for spec in unwrap(model).attentions_spec()}


def collect_attentions(out: ModelOutput, row: int = 0) -> dict[str, np.ndarray]:
    """ModelOutput.attentions -> {kind: (L, H, Tq, Tk) float32 array} for one batch row."""
    if out.attentions is None:
        raise ValueError("the model returned no attentions")
    per_kind: dict[str, list[tuple[int, Tensor]]] = {}
    for a in out.attentions:
        per_kind.setdefault(a.kind, []).append((a.layer, a.weights[row]))
    return {
        kind: np.stack([w.float().cpu().numpy() for _, w in sorted(items, key=lambda p: p[0])])  # (L, H, Tq, Tk)
        for kind, items in per_kind.items()
    }


def attention_set(
    model: nn.Module, input_ids: Tensor | list[int], tokens: dict[str, list[str]], tgt_ids: Tensor | list[int] | None = None
) -> AttentionSet:
    """Run the model once (eval, no grad) and keep every attention map of batch row 0."""
    with evaluating(model):
        out = run_model(model, input_ids, tgt_ids)
    return AttentionSet(unwrap(model).config.model_type, collect_attentions(out), tokens, streams_of(model))
