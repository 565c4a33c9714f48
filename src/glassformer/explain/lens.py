"""The logit lens (nostalgebraist, 2020): what the model would predict if it stopped after layer l.

The residual stream after each layer is read out with the model's own head, as if it were the
last layer:

    lens_l = Unembed(FinalNorm(resid_post_l))        GPT, pre-LN stacks
    lens_l = MLMHead(resid_post_l)                   BERT (post-LN: every layer already ends in a LayerNorm)
    lens_l = Generator(FinalNorm(resid_post_l))      the encoder-decoder's decoder

The first row reads the embeddings (``{stack}.embed``). At the last layer the lens is exactly
the model's output, and :func:`logit_lens` checks that it is (``max_error``).
For GPT the row at position t predicts token t + 1; for BERT it predicts the token at t.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glassformer.explain.capture import model_inputs
from glassformer.explain.hooks import InterventionError
from glassformer.io import atomic_path, make_dirs


@dataclass
class Lens:
    """Top-k readouts of every layer for one sequence (batch row 0)."""

    rows: list[str]  # "embed", "0", "1", ...: what was read
    top_ids: Tensor  # (R, T, k)
    top_probs: Tensor  # (R, T, k)
    logits: Tensor  # (R, T, V) float32
    max_error: float  # |last row - the model's logits|, max over positions and vocabulary


def require_readout(model: nn.Module, what: str) -> None:
    """Refuse, naming what is missing, a model with no language-model head (``model.predicts == "none"``)."""
    if model.predicts == "none":
        raise InterventionError(
            f"this {type(model).__name__} has no language-model head (no {model.head_module}: a sentence-embedding "
            f"checkpoint such as all-MiniLM-L6-v2 ships the encoder only, a classifier its label head); {what} needs one; explain, attention and heads work without it"
        )


def readout(model: nn.Module, x: Tensor, stack: str | None = None) -> Tensor:
    """What the model's head makes of a residual stream x (B, T, C): logits (B, T, V) (``model.readout``)."""
    require_readout(model, "the logit lens")
    return model.readout(x, stack)


@torch.no_grad()
def logit_lens(model: nn.Module, ids: Tensor, *, k: int = 5, tgt_ids: Tensor | None = None, **forward_kwargs: Any) -> Lens:
    """The logit lens of ``ids`` (B, T) (the source, with ``tgt_ids``, for the encoder-decoder)."""
    require_readout(model, "the logit lens")
    stack = model.readout_stack
    n = len(model.stack_module(stack).layers)
    names = [f"{stack}.embed"] + [f"{stack}.{i}.resid_post" for i in range(n)]
    args, kwargs = model_inputs(model, ids, tgt_ids)
    out, cache = model.run_with_cache(*args, names=names, **kwargs, **forward_kwargs)
    rows, stream = cache.accumulated_resid(stack=stack)  # (R, B, T, C)
    logits = model.readout(stream[:, 0], stack).float()  # (R, T, V)
    max_error = float((logits[-1] - model_token_logits(model, out)[0].float()).abs().max())
    logits = logits.cpu()
    probs = logits.softmax(-1)
    k = max(1, min(k, probs.shape[-1]))
    top_probs, top_ids = probs.topk(k, dim=-1)  # (R, T, k)
    return Lens(rows, top_ids, top_probs, logits, max_error)


def model_token_logits(model: nn.Module, out: Any) -> Tensor:
    """The model's own token logits (B, T, V) from a forward pass: ``out.logits``, or, when its forward
    answered with another head (a BERT classifier), its language-model head on its last hidden state."""
    v = model.config.vocab_size
    if out.logits is not None and out.logits.dim() == 3 and out.logits.shape[-1] == v:
        return out.logits
    return model.unembed()(out.last_hidden_state)  # (B, T, V)


def lens_json(lens: Lens, tokens: list[str], names: list[list[str]]) -> dict[str, Any]:
    """JSON-ready: for each row and position the top tokens with their probabilities.

    ``names[r][t]`` are display strings of ``lens.top_ids[r, t]`` (the caller's tokenizer)."""
    return {
        "tokens": tokens,
        "layers": lens.rows,
        "max_error_last_layer": lens.max_error,
        "top": [
            [
                [{"token": names[r][t][j], "id": int(lens.top_ids[r, t, j]), "p": round(float(lens.top_probs[r, t, j]), 6)}
                 for j in range(lens.top_ids.shape[-1])]
                for t in range(lens.top_ids.shape[1])
            ]
            for r in range(len(lens.rows))
        ],
    }


def format_lens(lens: Lens, tokens: list[str], top1: list[list[str]], width: int = 10) -> str:
    """A layers × positions grid of each position's top token and its probability, as text."""

    def cut(s: str) -> str:
        s = s.replace("\n", "\\n")
        return s if len(s) <= width else s[: width - 1] + "…"

    head = ["layer"] + [cut(t) for t in tokens]
    rows = [head]
    for r, name in enumerate(lens.rows):
        rows.append([name] + [f"{cut(top1[r][t])} {float(lens.top_probs[r, t, 0]):.2f}" for t in range(len(tokens))])
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def save_lens_png(lens: Lens, tokens: list[str], top1: list[list[str]], path: str | os.PathLike, title: str = "") -> Path:
    """The grid as a heatmap of top-1 probability, each cell labelled with its token (PNG)."""
    import matplotlib  # imported here: only this figure needs it, and it costs a second at start-up

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InterventionError(f"{path}: the lens figure is written as .png")
    probs = lens.top_probs[:, :, 0].numpy()  # (R, T)
    r, t = probs.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * t + 1.5), max(2.5, 0.45 * r + 1.2)))
    ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(r):
        for j in range(t):
            label = top1[i][j].replace("\n", "\\n")[:10]
            ax.text(j, i, label, ha="center", va="center", fontsize=7, color="white" if probs[i, j] > 0.6 else "black")
    ax.set_xticks(range(t), [s[:10] for s in tokens], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(r), lens.rows, fontsize=7)
    ax.set_xlabel("input position")
    ax.set_ylabel("layer read")
    ax.set_title(title or "logit lens: top token and its probability", fontsize=9)
    fig.tight_layout()
    make_dirs(path.parent)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
