"""The attention tools on a text: the four-step walk-through, the PNG figures and the seq2seq
alignment, for a model and its tokenizer (what ``glassformer explain`` and ``glassformer attention``
run; their command lines are in :mod:`glassformer.cli.explain`).

For the encoder-decoder (``model.needs_target``) the text is the source, and the target is given
or the model's own greedy translation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from glassformer.explain.capture import attention_set, default_kind, unwrap
from glassformer.explain.rotary import RotaryView, rotary_view
from glassformer.explain.steps import FourSteps, four_steps, resolve_kind
from glassformer.explain.tokens import encode_text, prepare, start_token, token_strings
from glassformer.explain.trace import greedy_translation


def target_ids(model: nn.Module, tokenizer: Any, source_ids: list[int], target: str | None,
               max_new_tokens: int | None = None) -> list[int]:
    """The decoder input [start] + target: the given text, or the model's greedy output (without its
    last token, so each row is a step that emitted a token)."""
    if target is not None:
        return [start_token(model, tokenizer)] + encode_text(tokenizer, target, add_special_tokens=False, what="target")
    context = greedy_translation(model, tokenizer, source_ids, max_new_tokens).context_ids
    return context[:-1] if len(context) > 1 else context


def check_target(model: nn.Module, target: str | None) -> None:
    """Refuse a target text for a model that reads one stream."""
    if target is not None and not unwrap(model).needs_target:
        raise ValueError(f"--target is only for an encoder-decoder, not a {type(unwrap(model)).__name__}")


def check_layer_head(model: nn.Module, kind: str, layer: int | None, head: int | None) -> None:
    """Refuse a layer or head the ``kind`` attention does not have, naming the range."""
    spec = unwrap(model).attention_spec(kind)
    if layer is not None and not 0 <= layer < spec.n_layers:
        raise ValueError(f"--layer {layer} is out of range: the {kind} stack has layers 0..{spec.n_layers - 1}")
    if head is not None and not 0 <= head < spec.n_heads:
        raise ValueError(f"--head {head} is out of range: this model has heads 0..{spec.n_heads - 1}")


@dataclass
class ExplainedToken:
    """The four steps of one head for one query token, with the strings to show them."""

    steps: FourSteps
    k_tokens: list[str]  # the positions looked at
    q_token: str  # the query token
    rotary: RotaryView | None = None  # rotary positions: q and k before and after the turn (else None)

    @property
    def ok(self) -> bool:
        """The four steps, and the rotated scores where there are any, equal the model's."""
        return self.steps.ok and (self.rotary is None or self.rotary.ok)


def explain_token(model: nn.Module, tokenizer: Any, text: str, layer: int, head: int, token: int | None = None,
                  kind: str = "auto", target: str | None = None) -> ExplainedToken:
    """Walk head ``head`` of ``layer`` through the four steps for query ``token`` (default: the last);
    with rotary positions, also show q and k before and after their turn (:mod:`.rotary`)."""
    m = unwrap(model)
    kind = resolve_kind(m, kind)
    check_target(m, target)
    spec = m.attention_spec(kind)
    check_layer_head(m, kind, layer, head)
    ids = encode_text(tokenizer, text, max_length=m.config.max_len)
    tgt = target_ids(m, tokenizer, ids, target) if m.needs_target else None
    streams = {"tokens": ids, "source": ids, "target": tgt}
    q_ids, k_ids = streams[spec.queries], streams[spec.keys]
    token = len(q_ids) - 1 if token is None else token
    if not 0 <= token < len(q_ids):
        raise ValueError(f"--token {token} is out of range: the {kind} queries are positions 0..{len(q_ids) - 1}")
    steps = four_steps(m, ids, layer, head, token, kind=kind, tgt_ids=tgt)
    rotary = rotary_view(m, ids, layer, head, token) if has_rotation(m, kind) else None
    return ExplainedToken(steps, token_strings(tokenizer, k_ids), token_strings(tokenizer, q_ids)[token], rotary)


def has_rotation(model: nn.Module, kind: str) -> bool:
    """True when the ``kind`` attention turns q and k by their positions (a GPT with rotary positions)."""
    return getattr(unwrap(model).config, "positions", None) == "rotary" and kind == "decoder-self"


def figure_kind(model: nn.Module, kind: str = "auto") -> str:
    """The attention a figure shows: ``kind``, or (``"auto"``) cross-attention where there is one,
    else the model's main attention; refused when the model has no such attention."""
    m = unwrap(model)
    kind = default_kind(m) if kind == "auto" else kind
    m.attention_spec(kind)  # refuses a kind the model lacks, naming those it has
    return kind


def save_attention_png(model: nn.Module, tokenizer: Any, text: str, out: str | os.PathLike, kind: str,
                       layer: int | None = None, head: int | None = None, target: str | None = None,
                       max_new_tokens: int | None = None) -> Path:
    """A PNG: one head (``layer`` and ``head``), every head of a layer (``layer``), every layer's mean
    (neither), or, for cross-attention without ``head``, the source/target alignment."""
    from glassformer.explain import heatmaps

    m = unwrap(model)
    out = Path(out)
    if kind == "cross" and head is None:
        weights, src_tokens, tgt_tokens = alignment(m, tokenizer, text, target, max_new_tokens)
        return heatmaps.save_cross_alignment(weights, src_tokens, tgt_tokens, out, layer=layer)
    tgt: Any = target
    if m.needs_target and tgt is None:
        src = prepare(m, tokenizer, text).input_ids
        tgt = target_ids(m, tokenizer, src, None, max_new_tokens)[1:]
    prepared = prepare(m, tokenizer, text, tgt)
    aset = attention_set(m, prepared.input_ids, prepared.tokens, prepared.tgt_ids)
    maps, q, k = aset.get(kind), aset.q_tokens(kind), aset.k_tokens(kind)
    if layer is not None and head is not None:
        return heatmaps.save_head_heatmap(maps[layer, head], q, k, out, f"{kind} · layer {layer} · head {head}")
    if layer is not None:
        return heatmaps.save_layer_heatmaps(maps[layer], q, k, out, f"{kind} · layer {layer}, every head")
    return heatmaps.save_layer_means(maps, q, k, out, f"{kind} · every layer, mean of its heads")


def alignment(model: nn.Module, tokenizer: Any, text: str, target: str | None = None, max_new_tokens: int | None = None):
    """Cross-attention between a source and the target: (L, H, T, S) weights, source and target tokens.

    Row t is the step that emitted target token t. Without ``target`` the model translates greedily
    and the rows are exactly the attention each generated token paid while being generated.
    """
    src = prepare(model, tokenizer, text).input_ids
    if target is None:
        trace = greedy_translation(model, tokenizer, src, max_new_tokens)
        if not trace.steps:
            raise ValueError("the model generated nothing to align")
        weights = np.stack([s.attention["cross"] for s in trace.steps], axis=2)  # (L, H, T, S)
        return weights, token_strings(tokenizer, src), token_strings(tokenizer, trace.generated_ids)
    prepared = prepare(model, tokenizer, text, target)
    tgt_in = prepared.tgt_ids[:-1] if len(prepared.tgt_ids) > 1 else prepared.tgt_ids
    aset = attention_set(model, src, prepared.tokens, tgt_in)
    out_tokens = prepared.tokens["target"][1:] or prepared.tokens["target"]
    return aset.get("cross"), prepared.tokens["source"], out_tokens
