"""Masks made visible: how the causal and the padding mask combine for a small padded batch.

The grids are built with the library's own mask functions (``causal_mask``, ``padding_mask``,
``combine_masks`` from ``glassformer.attention``), then, when a model is given, checked against
the weights the model actually returned: exactly 0 wherever the combined mask hides a key, rows
summing to 1 wherever something is visible, and all-zero rows (never NaN) where nothing is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from glassformer.attention import causal_mask, combine_masks, padding_mask
from glassformer.explain.capture import evaluating, model_inputs, unwrap
from glassformer.explain.render import show_token
from glassformer.explain.tokens import encode_text, token_strings

PaddingSide = Literal["right", "left"]
DEMO_TEXTS = ["the cat sat down", "a dog ran"]
PAD = "<pad>"


@dataclass
class MaskCheck:
    """What the model's own weights say about the masks (over every layer and head)."""

    kind: str
    max_hidden_weight: float  # largest weight on a hidden key: must be exactly 0
    max_row_sum_error: float  # largest |Σ weights - 1| over rows with a visible key
    empty_rows: int  # rows with no visible key (their weights must all be 0)
    empty_rows_ok: bool


@dataclass
class MaskDemo:
    """A padded batch and its masks. ``combined[b]`` is what query i of row b may attend."""

    tokens: list[list[str]]  # (B, T) token strings, "<pad>" on padding
    attention_mask: Tensor  # (B, T) 1 on real tokens
    causal: Tensor | None  # (T, T) bool, None for bidirectional attention
    padding: Tensor  # (B, 1, 1, T) bool: which keys are real
    combined: Tensor  # (B, T, T) bool
    kind: str  # the attention these masks feed
    padding_side: str
    check: MaskCheck | None = None


def _batch(texts: list[str], tokenizer: Any, model: nn.Module | None) -> tuple[list[list[int]], list[list[str]], int]:
    if tokenizer is None:  # no model: words stand in for tokens
        words = [t.split() for t in texts]
        vocab = {w: i + 1 for i, w in enumerate(dict.fromkeys(w for ws in words for w in ws))}
        return [[vocab[w] for w in ws] for ws in words], words, 0
    ids = [encode_text(tokenizer, t) for t in texts]
    pad = getattr(tokenizer, "pad_id", None)
    if pad is None and model is not None:
        pad = unwrap(model).config.pad_token_id
    return ids, [token_strings(tokenizer, i) for i in ids], 0 if pad is None else int(pad)


def build_mask_demo(
    texts: list[str] | None = None,
    tokenizer: Any = None,
    model: nn.Module | None = None,
    padding_side: PaddingSide = "right",
    causal: bool | None = None,
) -> MaskDemo:
    """Pad ``texts`` into one batch and build its masks; with a model, check them on its weights.

    One text gets a shorter copy (its first half) as a second row, so there is padding to see.
    ``causal`` defaults to the model's decoder self-attention (GPT, encoder-decoder) or True
    without a model; BERT's encoder attends both ways.
    """
    texts = list(texts) if texts else list(DEMO_TEXTS)
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    ids, toks, pad = _batch(texts, tokenizer, model)
    if len(ids) == 1:
        half = max(1, len(ids[0]) // 2)
        ids.append(ids[0][:half])
        toks.append(toks[0][:half])
    main = unwrap(model).main_attention if model is not None else None
    if causal is None:
        causal = main.causal if main is not None else True
    t = max(len(i) for i in ids)
    rows, masks, names = [], [], []
    for i, s in zip(ids, toks):
        n = t - len(i)
        if padding_side == "right":
            rows.append(i + [pad] * n)
            masks.append([1] * len(i) + [0] * n)
            names.append(s + [PAD] * n)
        else:
            rows.append([pad] * n + i)
            masks.append([0] * n + [1] * len(i))
            names.append([PAD] * n + s)
    attention_mask = torch.tensor(masks)  # (B, T)
    pad_mask = padding_mask(attention_mask)  # (B, 1, 1, T)
    c = causal_mask(t, t) if causal else None  # (T, T)
    combined = combine_masks(pad_mask, c)  # (B, 1, T, T) or (B, 1, 1, T)
    combined = torch.broadcast_to(combined, (len(rows), 1, t, t))[:, 0]  # (B, T, T)
    kind = ("decoder-self" if causal else "encoder-self") if main is None else main.kind
    demo = MaskDemo(names, attention_mask, c, pad_mask, combined, kind, padding_side)
    if model is not None:
        demo.check = check_on_model(model, torch.tensor(rows), demo)
    return demo


def check_on_model(model: nn.Module, input_ids: Tensor, demo: MaskDemo) -> MaskCheck:
    """Run the model on the padded batch and compare its weights with ``demo.combined``."""
    am = demo.attention_mask
    seq2seq = unwrap(model).needs_target
    # the encoder-decoder: the batch serves as source and as decoder input (its self-attention is checked)
    args, kwargs = model_inputs(model, input_ids, input_ids if seq2seq else None, attention_mask=am)
    if seq2seq:
        kwargs["tgt_mask"] = am.to(input_ids.device)
    with evaluating(model):
        out = model(*args, return_attentions=True, **kwargs)
    hidden_max, sum_err, empty, empty_ok = 0.0, 0.0, 0, True
    visible = demo.combined[:, None]  # (B, 1, T, T)
    has_key = visible.any(-1)  # (B, 1, T)
    for a in out.attentions:
        if a.kind != demo.kind:
            continue
        w = a.weights.float()  # (B, H, T, T)
        hidden_max = max(hidden_max, float(w.masked_fill(visible, 0.0).abs().max()))
        sums = w.sum(-1)  # (B, H, T)
        err = (sums - 1.0).abs().masked_fill(~has_key, 0.0)
        sum_err = max(sum_err, float(err.max()))
        empty_ok &= bool((w.masked_fill(has_key[..., None], 0.0) == 0).all())
    empty = int((~has_key).sum())
    return MaskCheck(demo.kind, hidden_max, sum_err, empty, empty_ok)


def _grid(mask: Tensor) -> list[str]:
    return [" ".join("■" if bool(v) else "·" for v in row) for row in mask]


def format_masks(demo: MaskDemo) -> str:
    """The masks of every row of the batch as text grids: ■ may attend, · hidden."""
    t = demo.combined.shape[-1]
    head = " ".join(str(j % 10) for j in range(t))
    lines = [
        f"{demo.kind} attention masks for a batch of {len(demo.tokens)} sequences, padded on the {demo.padding_side} "
        f"to {t} positions  (■ may attend, · hidden; rows ask, columns are looked at)",
        "combined = causal AND padding: query i sees key j only if j <= i and j is a real token"
        if demo.causal is not None else "combined = padding only: the encoder looks both ways, never at padding",
    ]
    for b, toks in enumerate(demo.tokens):
        real = int(demo.attention_mask[b].sum())
        lines += ["", f"row {b}: {real} real tokens, {t - real} padding   attention_mask = "
                      f"{demo.attention_mask[b].tolist()}"]
        pad_rows = demo.padding[b, 0, 0].expand(t, t)  # every query sees the same real keys
        grids = ([("causal", _grid(demo.causal))] if demo.causal is not None else []) + [
            ("padding", _grid(pad_rows)), ("combined", _grid(demo.combined[b]))]
        width = len(head)
        labels = [f"{i:>2} {show_token(tok, 8):<8}" for i, tok in enumerate(toks)]
        lines.append(" " * 12 + "   ".join(name.ljust(width) for name, _ in grids))
        lines.append(" " * 12 + "   ".join(head for _ in grids))
        for i in range(t):
            lines.append(labels[i] + " " + "   ".join(g[i] for _, g in grids))
    if demo.check is not None:
        c = demo.check
        ok = c.max_hidden_weight == 0.0 and c.max_row_sum_error <= 1e-5 and c.empty_rows_ok
        lines += [
            "",
            f"checked on the model's {c.kind} weights, every layer and head:",
            f"  largest weight on a hidden key: {c.max_hidden_weight:.1e} (must be exactly 0)",
            f"  largest |Σ weights - 1| on rows that see something: {c.max_row_sum_error:.1e}",
            f"  rows that see nothing: {c.empty_rows} (their weights are all 0, never NaN: {c.empty_rows_ok})",
            f"  {'OK' if ok else 'MISMATCH'}",
        ]
    return "\n".join(lines) + "\n"
