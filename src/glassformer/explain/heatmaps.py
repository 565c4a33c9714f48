"""Attention heatmaps as PNG files: one head, every head of a layer, every layer's mean, and the
cross-attention alignment of a translation (source tokens across, generated target tokens down).

Rows are the positions that ask (queries), columns the positions looked at (keys); each row sums
to 1. Figures are drawn with matplotlib's object API (no pyplot global state) and written through
a temporary file and a rename, so a crash never leaves half a PNG under the real name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from glassformer.explain.files import atomic_path
from glassformer.explain.render import show_token

CMAP = "viridis"


def _as_array(weights, ndim: int, name: str) -> np.ndarray:
    a = weights.detach().float().cpu().numpy() if hasattr(weights, "detach") else np.asarray(weights, dtype=np.float32)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or inf")
    return a


def _check_tokens(a: np.ndarray, q_tokens: Sequence[str], k_tokens: Sequence[str]) -> None:
    if a.shape[-2] != len(q_tokens) or a.shape[-1] != len(k_tokens):
        raise ValueError(
            f"weights are (Tq, Tk) = {a.shape[-2:]}, but there are {len(q_tokens)} query and {len(k_tokens)} key tokens"
        )


def _label_axis(ax, q_tokens: Sequence[str], k_tokens: Sequence[str], fontsize: float) -> None:
    """Token labels on both axes; long sequences get every n-th label so they stay legible."""
    for tokens, set_ticks, set_labels, rotation in (
        (k_tokens, ax.set_xticks, ax.set_xticklabels, 90),
        (q_tokens, ax.set_yticks, ax.set_yticklabels, 0),
    ):
        step = max(1, math.ceil(len(tokens) / 48))
        idx = list(range(0, len(tokens), step))
        set_ticks(idx)
        set_labels([show_token(tokens[i], 10) for i in idx], rotation=rotation, fontsize=fontsize)


def _draw(ax, a: np.ndarray, q_tokens, k_tokens, title: str | None, labels: bool, fontsize: float = 7.0):
    image = ax.imshow(a, cmap=CMAP, vmin=0.0, vmax=max(float(a.max()), 1e-6), aspect="auto", interpolation="nearest")
    if labels:
        _label_axis(ax, q_tokens, k_tokens, fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    return image


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: heatmaps are written as .png")
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _cell_inches(n: int) -> float:
    return min(0.28, max(0.06, 9.0 / max(n, 1)))


def save_head_heatmap(
    weights,
    q_tokens: Sequence[str],
    k_tokens: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
    *,
    xlabel: str = "key (attended to)",
    ylabel: str = "query (attending)",
) -> Path:
    """One head's (Tq, Tk) attention weights as a labelled heatmap."""
    a = _as_array(weights, 2, "weights")
    _check_tokens(a, q_tokens, k_tokens)
    c = _cell_inches(max(a.shape))
    fig = Figure(figsize=(max(4.0, 1.6 + c * a.shape[1]), max(3.5, 1.4 + c * a.shape[0])))
    ax = fig.add_subplot()
    image = _draw(ax, a, q_tokens, k_tokens, title, labels=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def _grid(
    panels: Sequence[np.ndarray], names: Sequence[str], q_tokens, k_tokens, path, title: str | None
) -> Path:
    n = len(panels)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    labels = max(panels[0].shape) <= 40  # token labels only while they stay readable
    side = 3.2 if labels else 2.4
    fig = Figure(figsize=(side * cols + 0.6, side * rows + (0.6 if title else 0.2)))
    for i, (a, name) in enumerate(zip(panels, names)):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw(ax, a, q_tokens, k_tokens, name, labels=labels, fontsize=5.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def save_layer_heatmaps(
    weights, q_tokens: Sequence[str], k_tokens: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> Path:
    """A grid with every head of one layer: weights (H, Tq, Tk)."""
    a = _as_array(weights, 3, "weights")
    _check_tokens(a, q_tokens, k_tokens)
    return _grid(list(a), [f"head {h}" for h in range(a.shape[0])], q_tokens, k_tokens, path, title)


def save_layer_means(
    weights, q_tokens: Sequence[str], k_tokens: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> Path:
    """A grid with each layer's attention averaged over its heads: weights (L, H, Tq, Tk)."""
    a = _as_array(weights, 4, "weights")
    _check_tokens(a, q_tokens, k_tokens)
    return _grid(list(a.mean(axis=1)), [f"layer {i} (mean of heads)" for i in range(a.shape[0])], q_tokens, k_tokens, path, title)


def save_cross_alignment(
    weights,
    src_tokens: Sequence[str],
    tgt_tokens: Sequence[str],
    path: str | os.PathLike,
    layer: int | None = None,
    title: str | None = None,
) -> Path:
    """Seq2seq alignment: cross-attention (L, H, T, S) averaged over heads (and layers unless
    ``layer`` is given); rows are the generated target tokens, columns the source tokens."""
    a = _as_array(weights, 4, "cross-attention weights")
    if layer is not None:
        if not 0 <= layer < a.shape[0]:
            raise ValueError(f"layer {layer} is out of range: the decoder has layers 0..{a.shape[0] - 1}")
        a = a[layer : layer + 1]
    mean = a.mean(axis=(0, 1))  # (T, S)
    where = "all layers" if layer is None else f"layer {layer}"
    return save_head_heatmap(
        mean, tgt_tokens, src_tokens, path, title or f"cross-attention alignment ({where}, mean of heads)",
        xlabel="source token", ylabel="generated target token",
    )


def image_stats(path: str | os.PathLike) -> tuple[tuple[int, ...], float]:
    """(shape, pixel variance) of a PNG: a blank image has variance 0. Used by the tests and docs."""
    from matplotlib.image import imread

    pixels = imread(str(path))
    return pixels.shape, float(np.var(pixels[..., :3]))
