"""Watch heads form: the attention of one probe sentence saved at every evaluation of a run.

``train --snapshot-attention "probe"`` makes the trainer call :func:`save_attention_snapshot` at
each eval. Each call writes ``RUN_DIR/attention/step_0000100.json`` (JSON only, no pickle) and
refreshes ``RUN_DIR/attention/index.html``, a self-contained page with a slider over the
steps, a heatmap per head, and each head's attention entropy over training: a head that learns
to look at one place sees its entropy fall.

For the encoder-decoder the probe is the source; its target is the model's own greedy output at
that step, or fixed with ``"source<TAB>target"`` so every snapshot shows the same positions.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from glassformer.explain.capture import attention_set, unwrap
from glassformer.explain.files import atomic_write_text
from glassformer.explain.tokens import prepare
from glassformer.explain.trace import greedy_translation
from glassformer.explain.viewer import decode_weights, encode_weights, render_html

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "attention"
FORMAT = "glassformer-attention-snapshot"
_NAME = re.compile(r"^step_(\d+)\.json$")


def head_entropy(weights: np.ndarray) -> np.ndarray:
    """Mean over query rows of the entropy −Σ w·ln w of each head: (L, H, Tq, Tk) -> (L, H), in nats.

    A head spread evenly over n keys has ln n; a head that looks at one key has 0.
    """
    w = np.clip(weights.astype(np.float64), 0.0, 1.0)
    ent = -(w * np.log(np.where(w > 0, w, 1.0))).sum(-1)  # (L, H, Tq)
    return ent.mean(-1)


def snapshot_data(model: nn.Module, tokenizer: Any, text: str, step: int) -> dict[str, Any]:
    """The probe's attention at this step, JSON-ready."""
    m = unwrap(model)
    target: str | list[int] | None = None
    if m.needs_target:
        text, sep, fixed = text.partition("\t")
        target = fixed if sep else greedy_translation(m, tokenizer, prepare(m, tokenizer, text).input_ids).generated_ids
    prepared = prepare(m, tokenizer, text, target)
    aset = attention_set(m, prepared.input_ids, prepared.tokens, prepared.tgt_ids)
    return {
        "format": FORMAT,
        "version": 1,
        "step": int(step),
        "family": aset.family,
        "probe": text,
        "streams": aset.tokens,
        "maps": {
            kind: {"q": aset.streams[kind][0], "k": aset.streams[kind][1],
                   "shape": list(a.shape), "weights": encode_weights(a),
                   "entropy": np.round(head_entropy(a), 6).tolist()}
            for kind, a in aset.maps.items()
        },
    }


def save_attention_snapshot(
    model: nn.Module, tokenizer: Any, text: str, step: int, run_dir: str | os.PathLike
) -> Path:
    """Save the attention of probe ``text`` at training ``step`` under ``run_dir/attention/``.

    Runs the model once in eval mode without gradients and restores its mode; draws no random
    numbers, so a run with snapshots trains exactly like one without. Returns the JSON path.
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the attention probe must be a non-empty sentence")
    data = snapshot_data(model, tokenizer, text, step)
    directory = Path(run_dir) / SNAPSHOT_DIR
    path = atomic_write_text(directory / f"step_{step:07d}.json", json.dumps(data, separators=(",", ":")))
    write_snapshot_gallery(run_dir)
    return path


def load_snapshots(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every snapshot of a run, by step. A file that cannot be read is skipped with a warning."""
    directory = Path(run_dir) / SNAPSHOT_DIR
    found = []
    for p in sorted(directory.glob("step_*.json")) if directory.is_dir() else []:
        if not _NAME.match(p.name):
            continue
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping attention snapshot %s: %s", p, e)
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT:
            found.append(data)
    return sorted(found, key=lambda d: d["step"])


def snapshot_weights(snapshot: dict[str, Any], kind: str) -> np.ndarray:
    """The (L, H, Tq, Tk) weights of one kind in a loaded snapshot."""
    entry = snapshot["maps"][kind]
    return decode_weights(entry["weights"], tuple(entry["shape"]))


def write_snapshot_gallery(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Write the slider page over every snapshot of the run (default ``run_dir/attention/index.html``)."""
    snapshots = load_snapshots(run_dir)
    if not snapshots:
        raise ValueError(f"{Path(run_dir) / SNAPSHOT_DIR}: no attention snapshots to show")
    first = snapshots[0]
    data = {
        "title": f"glassformer — heads forming on {first['probe'][:60]!r}",
        "family": first["family"],
        "snapshots": snapshots,
    }
    out = Path(path) if path is not None else Path(run_dir) / SNAPSHOT_DIR / "index.html"
    return atomic_write_text(out, render_html(data, template="gallery.html"))

