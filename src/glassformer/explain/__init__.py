"""See inside: attention capture, the four-step walk-through, heatmaps, the HTML viewer.

    from glassformer.explain import four_steps, format_four_steps
    steps = four_steps(model, input_ids, layer=1, head=0, token=5)   # checked against the model
    print(format_four_steps(steps, tokens))

Modules:

* :mod:`.capture` — find an attention module, run the model once, catch what it saw (temporary hooks);
* :mod:`.steps` — the four steps (QKᵀ, ÷√d_k, softmax, ·V) for one token, verified ≤ 1e-5;
* :mod:`.render` — the walk-through as plain text or a rich table;
* :mod:`.masks` — how causal and padding masks combine, checked on the model's weights;
* :mod:`.heatmaps` — PNG heatmaps: one head, a layer's heads, every layer's mean, seq2seq alignment;
* :mod:`.trace` — the generation inspector's record (attention and candidates per generated token);
* :mod:`.viewer` — the self-contained HTML viewer (``viewer.html``);
* :mod:`.snapshot` — attention snapshots during training and their gallery (``gallery.html``);
* :mod:`.texts` — the walk-through and the figures for a text (``glassformer explain``, ``attention``);
* :mod:`.heads`, :mod:`.lens`, :mod:`.attribution`, :mod:`.hooks` — head roles, the logit lens, direct
  logit attribution, ablation and patching; :mod:`.insight` runs them on a text.

Every model is asked through its family protocol (:mod:`glassformer.models.family`), and heads are
labelled one way (``encoder.L.H``, ``decoder.L.H``, ``cross.L.H``). The command lines are in
:mod:`glassformer.cli.explain`.

Names are loaded on first use, so importing one module does not pull in matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "four_steps": "steps", "FourSteps": "steps", "format_four_steps": "render", "four_steps_table": "render",
    "attention_set": "capture", "AttentionSet": "capture", "capture_calls": "capture",
    "save_head_heatmap": "heatmaps", "save_layer_heatmaps": "heatmaps", "save_layer_means": "heatmaps",
    "save_cross_alignment": "heatmaps", "build_mask_demo": "masks", "format_masks": "masks",
    "trace_generation": "trace", "viewer_data": "viewer", "write_viewer": "viewer",
    "save_attention_html": "viewer", "save_attention_snapshot": "snapshot", "write_snapshot_gallery": "snapshot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'glassformer.explain' has no attribute {name!r}")
    return getattr(importlib.import_module(f"glassformer.explain.{_EXPORTS[name]}"), name)
