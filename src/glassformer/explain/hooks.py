"""Interventions on named activations: switch heads off, patch one run's activation into another.

    from glassformer.explain.hooks import ablate_heads, patch
    out = ablate_heads(model, ids, heads=[(1, 3)], mode="zero")     # layer 1, head 3 silenced
    out = patch(model, clean_ids, corrupted_ids, "decoder.1.attn.z", positions=[5])

Both are thin layers over ``model.run_with_hooks`` (see :mod:`glassformer.models.hooks` for the
names). A head is silenced at its output ``z`` (B, H, T, D), before W^O mixes the heads: what
W^O reads for head h is exactly columns h·D .. (h+1)·D of Concat(head_1..head_H), so setting
``z[:, h]`` to zero is the same as zeroing that slice of W^O's input.

* ``mode="zero"`` replaces the head's output with zeros;
* ``mode="mean"`` replaces it with its mean over the batch and the positions of this very input
  (mean-ablation keeps the average signal the rest of the network expects, removing only what
  depends on the tokens).

Activation patching (Meng et al. 2022, "Locating and Editing Factual Associations"; Wang et al.
2022, "Interpretability in the Wild"): run the model on the corrupted input, but with one named
activation taken from the clean run. If the clean behaviour comes back, that activation carries it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from glassformer.errors import GlassformerError
from glassformer.models.hooks import check_names
from glassformer.models.outputs import ModelOutput

AblationMode = str  # "zero" | "mean"


class InterventionError(GlassformerError, ValueError):
    """Heads, modes, positions or inputs that an intervention cannot use."""


def model_family(model: nn.Module) -> str:
    """``"gpt"``, ``"bert"`` or ``"transformer"``."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in ("gpt", "bert", "transformer"):
        raise InterventionError(f"not a glassformer model (model_type {kind!r}); load it with glassformer.loading")
    return kind


def as_batch(ids: Tensor | Sequence[int], name: str = "input_ids") -> Tensor:
    """(T,) ids or a list -> (1, T); (B, T) stays."""
    t = ids if isinstance(ids, Tensor) else torch.tensor([int(i) for i in ids], dtype=torch.long)
    return t.unsqueeze(0) if t.dim() == 1 else t


def forward_args(model: nn.Module, ids: Tensor, tgt_ids: Tensor | None = None) -> tuple[tuple, dict[str, Any]]:
    """The positional and keyword arguments of one forward pass, whatever the family."""
    device = next(model.parameters()).device
    ids = as_batch(ids).to(device)
    if model_family(model) == "transformer":
        if tgt_ids is None:
            raise InterventionError("the encoder-decoder needs tgt_ids (the decoder input, from the start token)")
        return (ids, as_batch(tgt_ids, "tgt_ids").to(device)), {}
    if tgt_ids is not None:
        raise InterventionError(f"tgt_ids is only for the encoder-decoder, not a {model_family(model)} model")
    return (ids,), {}


def main_stack(model: nn.Module) -> str:
    """The stack whose heads a (layer, head) pair means: GPT and the encoder-decoder ``decoder``,
    BERT ``encoder``."""
    return "decoder" if isinstance(getattr(model, "decoder", None), nn.Module) else "encoder"


def n_heads(model: nn.Module) -> int:
    return int(model.config.n_heads)


def parse_heads(model: nn.Module, heads: Iterable[tuple[int, int]], stack: str | None = None) -> list[tuple[int, int]]:
    """Check (layer, head) pairs against the model; an error names the first bad one."""
    stack = stack or main_stack(model)
    module = getattr(model, stack, None)
    if module is None:
        raise InterventionError(f"this {type(model).__name__} has no {stack} stack")
    n_layers, h = len(module.layers), n_heads(model)
    out = []
    for pair in heads:
        layer, head = (int(pair[0]), int(pair[1]))
        if not 0 <= layer < n_layers:
            raise InterventionError(f"head {layer}.{head}: layer {layer} is out of range 0..{n_layers - 1}")
        if not 0 <= head < h:
            raise InterventionError(f"head {layer}.{head}: head {head} is out of range 0..{h - 1}")
        out.append((layer, head))
    if not out:
        raise InterventionError("no heads given to ablate")
    return out


def ablation_hooks(
    model: nn.Module, heads: Iterable[tuple[int, int]], mode: AblationMode = "zero", stack: str | None = None,
    attention: str = "attn",
) -> dict[str, Any]:
    """``{name: fn}`` that silences the given heads at ``{stack}.{layer}.{attention}.z``."""
    if mode not in ("zero", "mean"):
        raise InterventionError(f"unknown ablation mode {mode!r}; choose 'zero' or 'mean'")
    stack = stack or main_stack(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in parse_heads(model, heads, stack):
        by_layer.setdefault(layer, []).append(head)

    def silence(head_ids: list[int]):
        def fn(z: Tensor) -> Tensor:  # z: (B, H, T, D)
            z = z.clone()
            for h in head_ids:
                if mode == "zero":
                    z[:, h] = 0.0
                else:
                    z[:, h] = z[:, h].mean(dim=(0, 1), keepdim=True)  # mean over batch and positions
            return z

        return fn

    return {f"{stack}.{layer}.{attention}.z": silence(hs) for layer, hs in by_layer.items()}


@torch.no_grad()
def ablate_heads(
    model: nn.Module, ids: Tensor, heads: Sequence[tuple[int, int]], mode: AblationMode = "zero",
    *, stack: str | None = None, attention: str = "attn", **forward_kwargs: Any,
) -> ModelOutput:
    """The model's output on ``ids`` with the heads ``[(layer, head), ...]`` silenced.

    ``stack`` defaults to the model's main stack (``decoder`` for GPT and the encoder-decoder,
    ``encoder`` for BERT); ``attention="cross"`` silences encoder-decoder attention heads.
    ``forward_kwargs`` go to the model (``attention_mask``, ``tgt_ids`` for the encoder-decoder).
    """
    return model.run_with_hooks(ids, hooks=ablation_hooks(model, heads, mode, stack, attention), **forward_kwargs)


def time_dim(name: str) -> int:
    """The axis of the positions (T) in a named activation: 2 for per-head tensors (B, H, T, ·), else 1."""
    site = name.split(".", 2)[-1]
    return 2 if site.split(".")[0] in ("attn", "cross") and site.split(".")[-1] in ("q", "k", "v", "scores", "pattern", "z") else 1


@torch.no_grad()
def patch(
    model: nn.Module, clean_ids: Tensor, corrupted_ids: Tensor, name: str, positions: Sequence[int] | None = None,
    **forward_kwargs: Any,
) -> ModelOutput:
    """Activation patching: the output on ``corrupted_ids`` with activation ``name`` taken from the
    run on ``clean_ids`` (at ``positions`` only, when given; all positions otherwise).

    The two inputs must have the same shape, so the activation fits. ``forward_kwargs`` go to
    both runs. Patching clean into clean changes nothing (a test holds it to bit-identity).
    """
    check_names(model, [name])
    if tuple(clean_ids.shape) != tuple(corrupted_ids.shape):
        raise InterventionError(
            f"clean and corrupted inputs must have the same shape to patch, got {tuple(clean_ids.shape)} "
            f"and {tuple(corrupted_ids.shape)}"
        )
    _, cache = model.run_with_cache(clean_ids, names=[name], **forward_kwargs)
    clean = cache[name]
    dim = time_dim(name)
    if positions is not None:
        positions = [int(p) for p in positions]
        length = clean.shape[dim]
        for p in positions:
            if not -length <= p < length:
                raise InterventionError(f"position {p} is out of range for {name!r} with {length} positions")

    def replace(x: Tensor) -> Tensor:
        if positions is None:
            return clean
        x = x.clone()
        index = [slice(None)] * x.dim()
        index[dim] = positions
        x[tuple(index)] = clean[tuple(index)]
        return x

    return model.run_with_hooks(corrupted_ids, hooks={name: replace}, **forward_kwargs)
