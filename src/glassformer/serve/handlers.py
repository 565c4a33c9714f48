"""What each view of the explorer shows, computed by the library: one function per API endpoint.

Every number comes from the library's own functions (the family protocol on the model,
``run_with_cache`` and its :class:`~glassformer.models.activations.ActivationCache`, the explain
tools, the decode loop); this module only turns a request's checked arguments into their calls and
their results into JSON-ready dicts. It and :mod:`.why` (the lens, attribution, ablation and head
importance views) are the modules of ``serve/`` that call ``explain`` and ``generation``, so a change
of their names is made there once.

Each function takes a :class:`Served` model and plain, already validated arguments. Input errors
raise :class:`RequestError` (or the library's own ``ValueError`` family), which the app turns into
a 400 JSON answer.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glassformer.errors import GlassformerError
from glassformer.explain.heads import HeadScores, head_scores, sequence_for_model
from glassformer.explain.rotary import rotary_view
from glassformer.explain.snapshot import load_snapshots, snapshot_weights
from glassformer.explain.steps import four_steps
from glassformer.explain.texts import has_rotation
from glassformer.explain.tokens import start_token, token_strings
from glassformer.generation.config import GenerationConfig
from glassformer.generation.gpt import generate_lists
from glassformer.generation.loop import Step
from glassformer.generation.seq2seq import generate_seq2seq_lists
from glassformer.generation.text import within_tokenizer

MAX_TEXT_CHARS = 20_000  # a text longer than this is refused before it is tokenized
ROUND = 5  # decimals of the attention weights sent to the page


class RequestError(GlassformerError, ValueError):
    """A request the explorer cannot answer as asked (the message names the problem)."""


@dataclass
class Served:
    """One model opened at start: what the API refers to by index or name, never by path."""

    name: str
    path: Path
    pipeline: Any  # glassformer.api.Pipeline
    lock: threading.Lock = field(default_factory=threading.Lock)  # one computation at a time per model
    roles: dict[str, Any] | None = None  # head roles as JSON: computed once (they do not depend on the text)
    role_scores: HeadScores | None = None  # the same roles, as the library's object

    @property
    def model(self):
        return self.pipeline.model

    @property
    def tokenizer(self):
        return self.pipeline.tokenizer

    @property
    def max_len(self) -> int:
        return int(self.model.config.max_len)


# ------------------------------------------------------------------------------ describing a model


def describe(served: Served, index: int) -> dict[str, Any]:
    """What the page needs to lay out a model's views."""
    m = served.model
    specs = [
        {"kind": s.kind, "label": s.label, "n_layers": s.n_layers, "n_heads": s.n_heads, "causal": s.causal,
         "queries": s.queries, "keys": s.keys}
        for s in m.attentions_spec()
    ]
    return {
        "index": index, "name": served.name, "family": m.config.model_type, "predicts": m.predicts,
        "needs_target": bool(m.needs_target), "attentions": specs, "main": m.main_attention.label,
        "max_len": served.max_len, "vocab_size": int(m.config.vocab_size),
        "mask_token": _mask_token(served), "has_history": _has_history(served.path),
        "can_attribute": bool(getattr(m.config, "norm_first", False)) and m.predicts != "none" and m.readout_is_linear,
        "readout": m.readout_kind, "classes": m.class_labels,  # a classifier: ablation and attribution by class
    }


def _mask_token(served: Served) -> str | None:
    mask = getattr(served.tokenizer, "mask_id", None)
    if mask is None or served.model.predicts != "masked":
        return None
    return str(served.tokenizer.id_to_token(int(mask)))


def _has_history(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "attention").is_dir()


# ------------------------------------------------------------------------------ text -> ids


@dataclass
class Encoded:
    """A request's text as the model reads it."""

    ids: list[int]  # what the model reads (the source, for the encoder-decoder)
    tgt_ids: list[int] | None  # the decoder input of the encoder-decoder (start token first)
    streams: dict[str, list[dict[str, Any]]]  # stream name -> [{"id", "text"}], never padding

    def args(self, model) -> tuple[tuple, dict]:
        ids = torch.tensor([self.ids], dtype=torch.long)  # (1, T)
        tgt = torch.tensor([self.tgt_ids], dtype=torch.long) if self.tgt_ids is not None else None  # (1, T')
        return model.forward_inputs(ids, tgt)

    def stream(self, name: str) -> list[int]:
        return [t["id"] for t in self.streams[name]]


def text_ids(served: Served, text: str, what: str, specials: bool = True) -> list[int]:
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(f"the {what} is {len(text)} characters; the explorer reads at most {MAX_TEXT_CHARS}")
    tok = served.tokenizer
    try:
        ids = list(tok.encode(text, add_special_tokens=specials))
    except TypeError:
        ids = list(tok.encode(text))
    ids = [int(i) for i in getattr(ids, "ids", ids)]
    if not ids:
        raise RequestError(f"the {what} gives no tokens; type some text")
    return ids


def encode(served: Served, text: str, target: str | None = None) -> Encoded:
    """Token ids and display strings of a text (and of a target text, for the encoder-decoder)."""
    m, tok = served.model, served.tokenizer
    ids = text_ids(served, text, "text")
    if len(ids) > served.max_len:
        raise RequestError(f"the text is {len(ids)} tokens; this model reads at most {served.max_len}")
    pad = getattr(tok, "pad_id", None)
    tgt = None
    if m.needs_target:
        tgt = [start_token(m, tok)] + (text_ids(served, target, "target", specials=False) if target else [])
        if len(tgt) > served.max_len:
            raise RequestError(f"the target is {len(tgt)} tokens; this model reads at most {served.max_len}")
    elif target:
        raise RequestError(f"a target text is only for an encoder-decoder, not a {m.config.model_type} model")

    def rows(xs: list[int]) -> list[dict[str, Any]]:
        return [{"id": i, "text": s} for i, s in zip(xs, token_strings(tok, xs)) if i != pad or len(xs) == 1]

    streams = {"source": rows(ids), "target": rows(tgt)} if tgt is not None else {"tokens": rows(ids)}
    return Encoded(ids, tgt, streams)


def tokens(served: Served, text: str, target: str | None = None) -> dict[str, Any]:
    return {"streams": encode(served, text, target).streams}


# ------------------------------------------------------------------------------ attention + roles


def roles(served: Served) -> dict[str, Any]:
    """Every head's role scores (Olsson et al.'s repeated random tokens), computed once per model."""
    if served.roles is None:
        m = served.model
        scores = head_scores(m, **sequence_for_model(m, served.tokenizer))
        served.roles, served.role_scores = scores.to_json(), scores
    return served.roles


@torch.no_grad()
def attention(served: Served, text: str, target: str | None = None) -> dict[str, Any]:
    """Every layer's attention of every kind for the text, plus the head roles: the full update."""
    m = served.model
    enc = encode(served, text, target)
    args, kwargs = enc.args(m)
    out = m(*args, return_attentions=True, **kwargs)
    views = []
    for spec in m.attentions_spec():
        w = torch.stack([out.attention(spec.kind, layer)[0] for layer in range(spec.n_layers)])  # (L, H, Tq, Tk)
        views.append({"kind": spec.kind, "label": spec.label, "queries": spec.queries, "keys": spec.keys,
                      "shape": list(w.shape), "weights": np.round(w.float().numpy(), ROUND).tolist()})
    r = roles(served)
    return {"streams": enc.streams, "views": views, "roles": {"label": _role_label(served), **r}}


def _role_label(served: Served) -> str:
    return "encoder" if "encoder" in served.model.stacks else served.model.main_attention.label


# ------------------------------------------------------------------------------ one head


def steps(served: Served, text: str, head: str, query: int, target: str | None = None) -> dict[str, Any]:
    """The four steps of attention for one head and query position (the numbers ``explain`` prints);
    ``rotary`` is where rotary positions enter (:mod:`glassformer.explain.rotary`), None without them."""
    m = served.model
    ref = m.parse_head(head)
    enc = encode(served, text, target)
    spec = m.attention_spec(ref.kind)
    n_q = len(enc.stream(spec.queries))
    if not 0 <= query < n_q:
        raise RequestError(f"query {query} is out of range: the {spec.queries} has positions 0..{n_q - 1}")
    s = four_steps(m, enc.ids, ref.layer, ref.head, query, kind=ref.kind,
                   tgt_ids=None if enc.tgt_ids is None else torch.tensor([enc.tgt_ids]))

    def v(t: Tensor) -> list[float]:
        return [float(x) for x in t.tolist()]

    return {
        "head": ref.label, "kind": ref.kind, "layer": ref.layer, "index": ref.head, "query": query,
        "d_k": s.d_k, "scale": float(s.d_k) ** 0.5, "queries": spec.queries, "keys": spec.keys,
        "q": v(s.q), "raw_scores": v(s.raw_scores), "scaled_scores": v(s.scaled_scores),
        "mask": [bool(x) for x in s.mask.tolist()], "weights": v(s.weights), "z": v(s.z), "model_z": v(s.model_z),
        "max_diff": s.max_diff, "weights_max_diff": s.weights_max_diff, "ok": bool(s.ok),
        # rotary positions: q and the keys before and after their turn, and the scores without / with it
        "rotary": rotary_view(m, enc.ids, ref.layer, ref.head, query).to_json() if has_rotation(m, ref.kind) else None,
    }


# ------------------------------------------------------------------------------ generation


def generate(served: Served, text: str, n_steps: int, temperature: float, top_k: int | None, top_p: float | None,
             seed: int, n_candidates: int) -> dict[str, Any]:
    """Generate ``n_steps`` tokens with the library's decode loop; each step's candidates with their
    probabilities under the model and after temperature / top-k / top-p (the loop's ``on_step``)."""
    m, tok = served.model, served.tokenizer
    if m.predicts != "next":
        raise RequestError(f"this {m.config.model_type} model does not generate text"
                           + ("; use fill-mask" if m.predicts == "masked" else ""))
    enc = encode(served, text)
    eos = m.config.eos_token_id if m.config.eos_token_id is not None else getattr(tok, "eos_id", None)
    config = within_tokenizer(m, tok, GenerationConfig(max_new_tokens=n_steps, temperature=temperature, top_k=top_k,
                                                       top_p=top_p, seed=seed, eos_token_id=eos))
    found: list[dict[str, Any]] = []

    def record(step: Step) -> None:
        chosen = step.tokens[0]
        p_model = step.logits[0].float().softmax(-1)  # (V,)
        if temperature == 0:
            p_drawn = torch.zeros_like(p_model)
            p_drawn[chosen] = 1.0  # greedy: the argmax is taken with probability 1
        else:
            p_drawn = step.scores[0].float().softmax(-1)
        ids = list(dict.fromkeys(p_model.topk(min(n_candidates, p_model.numel())).indices.tolist() + [chosen]))
        ids.sort(key=lambda i: -float(p_model[i]))
        cands = [{"id": i, "text": s, "p": round(float(p_model[i]), 6), "p_drawn": round(float(p_drawn[i]), 6)}
                 for i, s in zip(ids, token_strings(tok, ids))]
        found.append({"id": chosen, "text": token_strings(tok, [chosen])[0], "candidates": cands})

    if m.needs_target:
        generate_seq2seq_lists(m, torch.tensor([enc.ids]), config, start_token_id=start_token(m, tok), on_step=record)
    else:
        room = served.max_len - len(enc.ids)
        if room <= 0:
            raise RequestError(f"the prompt fills the model's {served.max_len} positions; shorten it to generate")
        generate_lists(m, [enc.ids], config.replace(max_new_tokens=min(n_steps, room)), on_step=record)
    return {"streams": enc.streams, "steps": found,
            "text": tok.decode([s["id"] for s in found], skip_special_tokens=True) if found else ""}


def fill_mask(served: Served, text: str, k: int) -> dict[str, Any]:
    """For each mask token of the text: the top candidates (what ``glassformer fill-mask`` prints; the
    text layer reads the mask token written as text, e.g. ``[MASK]``)."""
    if served.model.predicts != "masked":
        raise RequestError(f"fill-mask needs a BERT with a masked-LM head; this {served.model.config.model_type} "
                           "model has none")
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(f"the text is {len(text)} characters; the explorer reads at most {MAX_TEXT_CHARS}")
    rows = served.pipeline.fill_mask(text, top_k=k)
    return {"masks": [[{"id": int(c["id"]), "text": str(c["token"]), "p": float(c["p"])} for c in r]
                                              for r in rows]}


# ------------------------------------------------------------------------------ a run's history


def history(served: Served) -> dict[str, Any]:
    """A run directory's loss curve (``metrics.jsonl``) and its ``--snapshot-attention`` frames."""
    curve = []
    metrics = served.path / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                curve.append({k: row.get(k) for k in ("step", "train_loss", "val_loss") if isinstance(row.get(k), (int, float))})
    frames = []
    for snap in load_snapshots(served.path):
        kind = next(iter(snap["maps"]))
        entry = snap["maps"][kind]
        frames.append({"step": snap["step"], "kind": kind, "probe": snap["probe"], "tokens": snap["streams"][entry["q"]],
                       "keys": snap["streams"][entry["k"]],
                       "weights": np.round(snapshot_weights(snap, kind), 4).tolist()})
    return {"curve": curve, "frames": frames}
