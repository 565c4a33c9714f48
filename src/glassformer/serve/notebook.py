"""Inline notebook views: ``glassformer.load(dir).show("text")``, the explorer's views with no server.

The output is one self-contained HTML fragment: the package's own ``app.css`` and ``app.js`` inlined
(no CDN, nothing fetched), and the JSON the API would return for this text embedded beside them,
so the page script draws exactly what ``glassformer serve`` draws. Clicks that need a new
computation (another text, an ablation, a generation step) say to run ``glassformer serve``.
"""

from __future__ import annotations

import html
import json
import uuid
from pathlib import Path
from typing import Any

from glassformer.serve import handlers, why
from glassformer.serve.handlers import Served

STATIC = Path(__file__).parent / "static"
MAX_STEP_HEADS = 144  # the four steps are embedded for every head of the main attention up to this many


def _key(path: str, body: dict[str, Any]) -> str:
    """The page script's cache key: ``path + " " + JSON.stringify(body)`` (same key order, no spaces)."""
    return path + " " + json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element: every "<" written as \\u003c, so no "</script>" or "<!--"
    in model text can end it early (still valid JSON, and the same string once parsed)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


class ExplorerView:
    """What ``show`` returns: Jupyter renders its :meth:`_repr_html_`; :attr:`data` holds the embedded JSON."""

    def __init__(self, data: dict[str, Any], text: str, head: str | None, query: int | None) -> None:
        self.data, self.text, self.head, self.query = data, text, head, query

    def __repr__(self) -> str:
        return f"ExplorerView(text={self.text!r}, head={self.head!r}, {len(self.data['responses'])} embedded answers)"

    def _repr_html_(self) -> str:
        root = f"gf-{uuid.uuid4().hex[:12]}"
        options = {"embed": self.data, "text": self.text, "head": self.head, "query": self.query}
        return (
            f'<div id="{root}" class="gf"><style>{(STATIC / "app.css").read_text(encoding="utf-8")}</style>'
            '<header class="gf-bar"><strong>glassformer</strong><label>model <select data-gf="model"></select></label>'
            f'<input data-gf="text" type="text" spellcheck="false" value="{html.escape(self.text)}" aria-label="text" readonly>'
            '<input data-gf="target" type="text" hidden><span data-gf="status" class="gf-status"></span></header>'
            f'<main></main><script>{(STATIC / "app.js").read_text(encoding="utf-8")}\n'
            f'glassformerExplorer(document.getElementById("{root}"), {_script_json(options)});</script></div>'
        )


def show(pipeline: Any, text: str, head: str | None = None, query: int | None = None) -> ExplorerView:
    """The explorer's views of ``text`` on a loaded model (a :class:`glassformer.api.Pipeline`), for a
    notebook. ``head`` (e.g. ``"1.3"``) and ``query`` (a position) pick the head whose four steps open first."""
    if query is not None and (not isinstance(query, int) or isinstance(query, bool)):
        raise TypeError(f"query is a token position (an int), got {query!r}")
    served = Served(Path(str(pipeline.path or "model")).name, Path(str(pipeline.path or ".")), pipeline)
    info = handlers.describe(served, 0)
    body = {"model": 0, "text": text}
    responses = {_key("attention", body): handlers.attention(served, text)}
    spec = served.model.main_attention
    chosen = served.model.parse_head(head).label if head is not None else f"{spec.label}.0.0"
    n_q = len(next(iter(responses[_key("attention", body)]["streams"].values())))
    query = n_q - 1 if query is None else query
    heads = spec.heads() if spec.n_layers * spec.n_heads <= MAX_STEP_HEADS else [served.model.parse_head(chosen)]
    for ref in heads:
        b = {**body, "head": ref.label, "query": query}
        responses[_key("steps", b)] = handlers.steps(served, text, ref.label, query)
    if spec.n_layers * spec.n_heads <= MAX_STEP_HEADS:  # every head ranked by ablation (the "rank every head" button), both modes: a forward pass per 16 heads
        for mode in ("zero", "mean"):
            b = {**body, "mode": mode, **({"target": ""} if info["needs_target"] else {})}
            responses[_key("importance", b)] = why.importance(served, text, None, mode)
    if info["predicts"] != "none":
        responses[_key("lens", {**body, "k": 3})] = why.lens(served, text, 3)
    if info["can_attribute"]:
        responses[_key("attribution", {**body, "token": None})] = why.attribution(served, text, None, None)
    if info["has_history"]:
        responses[_key("history", {"model": 0})] = handlers.history(served)
    return ExplorerView({"models": {"models": [info]}, "responses": responses}, text, chosen, query)
