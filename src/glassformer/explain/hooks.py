"""Interventions on named activations: switch heads off, patch one run's activation into another.

    from glassformer.explain.hooks import ablate_heads, patch
    out = ablate_heads(model, ids, heads=["1.3"], mode="zero")       # main attention: layer 1, head 3
    out = ablate_heads(model, src, heads=["cross.0.2"], tgt_ids=tgt)  # an encoder-decoder attention head
    out = patch(model, clean_ids, corrupted_ids, "decoder.1.attn.z", positions=[5])

Both are thin layers over ``model.run_with_hooks`` (see :mod:`glassformer.models.hooks` for the
names; heads are labelled as :mod:`glassformer.models.family` labels them). A head is silenced at
its output ``z`` (B, H, T, D), before W^O mixes the heads: what W^O reads for head h is exactly columns h·D .. (h+1)·D of Concat(head_1..head_H), so setting
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
from glassformer.models.family import HeadError, HeadRef
from glassformer.models.hooks import check_names
from glassformer.models.outputs import ModelOutput

AblationMode = str  # "zero" | "mean"


class InterventionError(GlassformerError, ValueError):
    """Heads, modes, positions or inputs that an intervention cannot use."""


HeadArg = str | HeadRef | tuple[int, int]  # "cross.1.0", "1.3" (the main attention), HeadRef, (1, 3)


def parse_heads(model: nn.Module, heads: Iterable[HeadArg], kind: str | None = None) -> list[HeadRef]:
    """Heads as the model names them (``model.parse_head``): labels ``encoder.L.H``, ``decoder.L.H``,
    ``cross.L.H``, or a bare ``L.H`` / (layer, head) meaning ``kind`` (default: the model's main
    attention). An error names the first bad one."""
    try:
        refs = [model.parse_head(h, kind=kind) for h in heads]
    except HeadError as e:
        raise InterventionError(str(e)) from None
    if not refs:
        raise InterventionError("no heads given to ablate")
    return refs


def ablation_hooks(
    model: nn.Module, heads: Iterable[HeadArg], mode: AblationMode = "zero", kind: str | None = None
) -> dict[str, Any]:
    """``{name: fn}`` that silences the given heads at their output ``{stack}.{layer}.{site}.z``."""
    if mode not in ("zero", "mean"):
        raise InterventionError(f"unknown ablation mode {mode!r}; choose 'zero' or 'mean'")
    by_site: dict[str, list[int]] = {}
    for ref in parse_heads(model, heads, kind):
        by_site.setdefault(model.attention_spec(ref.kind).activation(ref.layer, "z"), []).append(ref.head)

    def silence(head_ids: list[int]):
        def fn(z: Tensor) -> Tensor:  # z: (B, H, T, D)
            z = z.clone()
            for h in head_ids:
                silence_head(z, h, mode)
            return z

        return fn

    return {name: silence(hs) for name, hs in by_site.items()}


def silence_head(z: Tensor, head: int, mode: AblationMode, row: int | None = None) -> None:
    """In place: head ``head`` of ``z`` (B, H, T, D) set to zero, or to its mean over the batch and the
    positions; with ``row``, in that batch row only (its mean over its own positions)."""
    rows = slice(None) if row is None else slice(row, row + 1)
    part = z[rows, head]  # (B or 1, T, D)
    part[...] = 0.0 if mode == "zero" else part.mean(dim=(0, 1), keepdim=True)


@torch.no_grad()
def ablate_heads(
    model: nn.Module, ids: Tensor, heads: Sequence[HeadArg], mode: AblationMode = "zero",
    *, kind: str | None = None, **forward_kwargs: Any,
) -> ModelOutput:
    """The model's output on ``ids`` with ``heads`` silenced: labels such as ``"cross.1.0"`` or
    ``"encoder.0.2"``, or bare ``"1.3"`` / ``(1, 3)`` pairs, which mean ``kind`` (default: the model's
    main attention, ``model.main_attention``: GPT's and the encoder-decoder's decoder self-attention,
    BERT's encoder self-attention). ``forward_kwargs`` go to the model (``attention_mask``,
    ``tgt_ids`` for the encoder-decoder).
    """
    return model.run_with_hooks(ids, hooks=ablation_hooks(model, heads, mode, kind), **forward_kwargs)


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
