"""The offline HTML attention viewer: one self-contained file (JS and CSS inline, no network).

It shows the head view (choose a layer and heads, hover a token to see the lines to what it
attends) for every attention the model has — encoder self, decoder (masked) self, cross — the
attention matrix of the chosen heads, the model view (a thumbnail of every layer × head, labelled
with the head's role from :mod:`glassformer.explain.heads`), and, for GPT and the encoder-decoder, a generation
inspector: for each generated token, the attention it paid and its top candidates with their
probabilities before and after temperature / top-k / top-p.

Weights are embedded as base64 little-endian uint16 (value = q / 65535, so every number the
page shows is within 1e-5 of the model's), decoded lazily per layer by the page. Lines are drawn
on a canvas for the hovered token only, which keeps the page responsive at 512 tokens.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from glassformer.explain.capture import attention_set, unwrap
from glassformer.explain.tokens import prepare, start_token, token_strings
from glassformer.explain.trace import GenerationTrace, eos_id, trace_generation
from glassformer.io import atomic_write_text

log = logging.getLogger(__name__)

CONTINUATION = 4  # tokens a GPT adds to the prompt by default: enough to see, few enough to stay on topic
QUANT = 65535  # uint16 levels: a quantisation error of at most 0.5 / 65535 < 1e-5
PLACEHOLDER = "__GLASSFORMER_DATA__"
LARGE_PAGE = 64 * 2**20  # above this many bytes of weights, suggest viewing fewer layers
FORMAT = "glassformer-attention"


def encode_weights(a: np.ndarray) -> str:
    """Weights in [0, 1] -> base64 of little-endian uint16 (row-major)."""
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("attention weights hold NaN or inf")
    q = np.rint(np.clip(a, 0.0, 1.0) * QUANT).astype("<u2")
    return base64.b64encode(q.tobytes()).decode("ascii")


def decode_weights(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_weights` (what the page does in JavaScript)."""
    q = np.frombuffer(base64.b64decode(text), dtype="<u2")
    return (q.astype(np.float64) / QUANT).reshape(shape)


def _views(aset, layers: list[int] | None) -> list[dict[str, Any]]:
    views = []
    for kind, maps in aset.maps.items():
        chosen = list(range(maps.shape[0])) if layers is None else layers
        for layer in chosen:
            if not 0 <= layer < maps.shape[0]:
                raise ValueError(f"layer {layer} is out of range: the {kind} stack has layers 0..{maps.shape[0] - 1}")
        q, k = aset.streams[kind]
        views.append({
            "kind": kind, "q": q, "k": k, "layers": chosen, "heads": int(maps.shape[1]),
            "tq": int(maps.shape[2]), "tk": int(maps.shape[3]),
            "weights": [encode_weights(maps[layer]) for layer in chosen],  # each (H, Tq, Tk)
        })
    return views


def _generation(trace: GenerationTrace, tokenizer: Any, source: list[str] | None) -> dict[str, Any]:
    steps = []
    for st in trace.steps:
        names = token_strings(tokenizer, [c.token_id for c in st.candidates])
        steps.append({
            "id": st.token_id,
            "token": token_strings(tokenizer, [st.token_id])[0],
            "query": st.query,
            "candidates": [[n, c.token_id, round(c.p_model, 6), round(c.p_sampled, 6)] for n, c in zip(names, st.candidates)],
            "attention": {k: {"tk": int(a.shape[-1]), "weights": encode_weights(a)} for k, a in st.attention.items()},
        })
    return {
        "settings": trace.settings,
        "context": token_strings(tokenizer, trace.context_ids),
        "source": source,
        "steps": steps,
    }


def viewer_data(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    *,
    target: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    layers: list[int] | None = None,
    title: str | None = None,
    head_roles: Any = "auto",
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data.

    GPT: ``text`` is the prompt; the model continues it by ``max_new_tokens`` (default :data:`CONTINUATION`; 0 for
    none) and the head view covers prompt + generated tokens. BERT: the head view of ``text``. Encoder-decoder: ``text``
    is the source; the target is ``target`` when given, else the model's own generation.
    ``layers`` limits the head view to some layers (smaller files for big models).
    ``head_roles``: the :class:`~glassformer.explain.heads.HeadScores` that label the model view;
    ``"auto"`` scores them here (one extra forward pass on random tokens), None leaves them out.
    """
    m = unwrap(model)
    seq2seq = m.needs_target  # the encoder-decoder: a source and a generated target
    continues = m.predicts == "next" and not seq2seq  # a decoder-only model continues the prompt
    trace = None
    prepared = prepare(m, tokenizer, text, target if seq2seq else None)
    if max_new_tokens is None:  # GPT: a short continuation; seq2seq: room for a whole translation
        max_new_tokens = CONTINUATION if not seq2seq else max(1, min(m.config.max_len - 1, (3 * len(prepared.input_ids)) // 2 + 8))
    if continues and max_new_tokens > 0:
        trace = _trace(m, tokenizer, prepared.input_ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        prepared.input_ids = trace.context_ids
        prepared.tokens = {"tokens": token_strings(tokenizer, trace.context_ids)}
    elif seq2seq and (max_new_tokens > 0 or target is None):
        trace = _trace(m, tokenizer, prepared.input_ids, max(max_new_tokens, 1), temperature, top_k, top_p,
                       repetition_penalty, seed)
        if target is None:
            prepared.tgt_ids = trace.context_ids
            prepared.tokens["target"] = token_strings(tokenizer, trace.context_ids)
    aset = attention_set(m, prepared.input_ids, prepared.tokens, prepared.tgt_ids)
    size = sum(a[0].size * (a.shape[0] if layers is None else len(layers)) * 2 for a in aset.maps.values())
    if size > LARGE_PAGE:
        log.warning("the page will hold %.0f MB of attention weights; pass layers=[...] (--layer) for a lighter one",
                    size / 2**20)
    generated: dict[str, int] = {}
    if continues and trace is not None:
        generated["tokens"] = len(trace.prompt_ids)
    elif seq2seq and target is None:
        generated["target"] = 1
    c = m.config
    return {
        "format": FORMAT,
        "version": 1,
        "title": title or f"glassformer attention — {text[:60]}",
        "family": m.config.model_type,
        "config": {"n_layers": c.n_layers, "n_heads": c.n_heads, "d_model": c.d_model, "d_head": c.d_head},
        "kinds": [spec.kind for spec in m.attentions_spec()],
        "streams": aset.tokens,
        "generated": generated,
        "views": _views(aset, layers),
        "generation": None if trace is None else _generation(trace, tokenizer, aset.tokens.get("source")),
        "roles": _roles(m, tokenizer, head_roles),
    }


def _roles(model: nn.Module, tokenizer: Any, head_roles: Any) -> dict[str, Any] | None:
    """``{kind: [[{role, score, scores}] per head] per layer}`` for the model view's labels."""
    from glassformer.explain.heads import ROLES, head_scores, sequence_for_model
    from glassformer.explain.hooks import InterventionError

    if head_roles is None:
        return None
    if head_roles == "auto":
        try:
            head_roles = head_scores(model, **sequence_for_model(model, tokenizer))
        except InterventionError as e:  # e.g. a vocabulary too small for random sequences
            log.info("model view without head roles: %s", e)
            return None
    kind = head_roles.kind
    n_layers, n_heads = head_roles.shape
    table = []
    for layer in range(n_layers):
        row = []
        for head in range(n_heads):
            role, score = head_roles.role(layer, head)
            row.append({"role": role, "score": round(score, 4),
                        "scores": {r: round(float(head_roles.scores[r][layer, head]), 4) for r in ROLES}})
        table.append(row)
    return {kind: table}


def _trace(m, tokenizer, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed) -> GenerationTrace:
    start = start_token(m, tokenizer) if m.needs_target else None
    return trace_generation(
        m, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, seed=seed, eos_token_id=eos_id(m, tokenizer), start_token_id=start,
    )


def render_html(data: dict[str, Any], template: str = "viewer.html") -> str:
    """The page: the template with ``data`` embedded as JSON (``<`` escaped so no text can end the script)."""
    page = resources.files("glassformer.explain").joinpath(template).read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")
    title = str(data.get("title", "glassformer")).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return page.replace("__TITLE__", title).replace(PLACEHOLDER, payload)


def write_viewer(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the self-contained page (atomically) and return its path."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"{path}: the viewer is written as .html")
    atomic_write_text(path, render_html(data))
    return path


def save_attention_html(model: nn.Module, tokenizer: Any, text: str, path: str | os.PathLike, **kwargs: Any) -> Path:
    """:func:`viewer_data` + :func:`write_viewer` in one call."""
    return write_viewer(viewer_data(model, tokenizer, text, **kwargs), path)


def read_viewer_data(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON embedded in a page written by :func:`write_viewer` (for tests and tools)."""
    page = Path(path).read_text(encoding="utf-8")
    start = page.index('id="gf-data">') + len('id="gf-data">')
    end = page.index("</script>", start)
    return json.loads(page[start:end])
