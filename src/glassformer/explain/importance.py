"""Which heads matter for this text: silence each head alone and rank them by what the model loses.

Head roles (:mod:`.heads`) say what a head's attention *looks like* on random tokens; ablation
says what the model *loses* without it on a real text. Side by side they answer two questions at
once: is the head that looks like an induction head the one the prediction needs, and which heads
matter although no role names them (a head that moves information in a way the role scores do not
describe)?

For every head of one attention (default: the model's main one) the model runs once with that
head alone silenced (its output ``z`` set to zero, or to its mean over the positions with
``mode="mean"``, as :func:`glassformer.explain.hooks.ablation_hooks` does). The change is measured
where the model's answer is:

* a language model (GPT, or an encoder-decoder given a ``target`` of at least one token): the
  loss on the text itself, mean cross-entropy in nats per predicted token (position t predicting
  token t+1); the change is ``after - before`` and may be negative (the head hurt). Each head also
  keeps the change token by token (``by_position``): *where* in the text it matters;
* a classifier, a masked LM or a one-step encoder-decoder: KL(before ‖ after) of its readout
  (:mod:`.readouts`), in nats;
* a sentence-embedding model: 1 - cosine(before, after) of the sentence vector.

The heads are silenced in batches (one row per head, all rows the same input): row i is exactly
the one-head ablation of head i, because a head's site is the first place where its row differs
from the others' input. ``tests/test_importance.py`` checks batched == one by one.

A head is flagged *unnamed* when its change is at least ``UNNAMED_SHARE`` of the largest change
and its strongest role score is below :data:`~glassformer.explain.heads.ROLE_THRESHOLD`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from glassformer.explain.heads import ROLE_THRESHOLD, HeadScores
from glassformer.explain.hooks import InterventionError, silence_head
from glassformer.explain.lens import model_token_logits
from glassformer.explain.readouts import choose_readout
from glassformer.explain.tokens import token_strings
from glassformer.models.family import HeadRef

UNNAMED_SHARE = 0.5  # a head "matters" from half the largest change on
ROWS_PER_BATCH = 16  # heads silenced per forward pass


@dataclass
class HeadEffect:
    """One head silenced alone: the measure after, its change, and the head's role on random tokens."""

    label: str
    layer: int
    head: int
    after: float  # the measure with this head silenced
    change: float  # after - before (loss), or the KL / 1 - cosine itself
    role: str | None = None  # its strongest role when it reaches ROLE_THRESHOLD, else None
    role_score: float | None = None  # that role's score (None: roles not scored for this attention)
    unnamed: bool = False  # matters (>= UNNAMED_SHARE of the largest change) with no named role
    by_position: list[float] | None = None  # loss measure: the change of each predicted token's loss


@dataclass
class Importance:
    """Every head of one attention, most important first (see the module docstring)."""

    attention: str  # "decoder-self", "encoder-self" or "cross"
    mode: str  # "zero" | "mean"
    measure: str  # "loss" | "kl" | "cosine"
    before: float  # the loss before any ablation (0 for kl, 1 for cosine)
    n_tokens: int
    heads: list[HeadEffect] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)  # loss measure: the predicted token ids (position t -> t + 1)
    target_texts: list[str] = field(default_factory=list)  # and how they display

    @property
    def unnamed(self) -> list[str]:
        return [h.label for h in self.heads if h.unnamed]

    def describe(self) -> str:
        """The measure in words."""
        return {"loss": "loss on the text (nats per predicted token)",
                "kl": "KL(before ‖ after) of the model's answer (nats)",
                "cosine": "1 - cosine similarity of the sentence vector"}[self.measure]

    def to_json(self) -> dict[str, Any]:
        return {"attention": self.attention, "mode": self.mode, "measure": self.measure, "describe": self.describe(),
                "before": round(self.before, 6), "n_tokens": self.n_tokens, "threshold": ROLE_THRESHOLD,
                "unnamed_share": UNNAMED_SHARE, "unnamed": self.unnamed, "targets": self.targets,
                "target_texts": self.target_texts,
                "heads": [{"label": h.label, "layer": h.layer, "head": h.head, "after": round(h.after, 6),
                           "change": round(h.change, 6), "role": h.role,
                           "role_score": None if h.role_score is None else round(h.role_score, 6),
                           "unnamed": h.unnamed,
                           "by_position": None if h.by_position is None else [round(x, 5) for x in h.by_position]}
                          for h in self.heads]}


def _silence_rows(z: Tensor, rows: list[tuple[int, int]], mode: str) -> Tensor:
    """z (B, H, T, D) with head h of row b silenced for each (b, h)."""
    z = z.clone()
    for b, h in rows:
        silence_head(z, h, mode, row=b)
    return z


class _Measure:
    """Reads one batch of outputs as the measure of each row."""

    def __init__(self, model: nn.Module, tokenizer: Any, ids: list[int], tgt: list[int] | None, readout: str,
                 pooling: Sequence[str]) -> None:
        self.model = model
        stream = tgt if model.needs_target else ids
        if model.predicts == "next" and readout in ("auto", "tokens") and stream is not None and len(stream) > 1:
            self.kind, self.readout = "loss", None
            self.labels = torch.tensor(stream[1:])  # (T-1,) position t predicts token t+1
        else:
            self.readout = choose_readout(model, tokenizer, ids, readout, pooling, tgt)
            self.kind = "cosine" if self.readout.kind == "embedding" else "kl"

    def read(self, out: Any) -> Tensor:
        """(B, T-1) losses of each predicted token, or (B, K) readouts."""
        if self.kind != "loss":
            return self.readout.read(self.model, out)
        logits = model_token_logits(self.model, out)[:, :-1].float()  # (B, T-1, V)
        labels = self.labels.to(logits.device).expand(logits.shape[0], -1)  # (B, T-1)
        return nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (B, T-1)

    def change(self, before: Tensor, after: Tensor) -> tuple[Tensor, Tensor]:
        """(after, change) per row, from the clean reading (1, ...) and the ablated ones (B, ...)."""
        if self.kind == "loss":
            return after.mean(-1), (after - before).mean(-1)
        if self.kind == "cosine":
            cos = nn.functional.cosine_similarity(after.double(), before.double().expand_as(after), dim=-1)
            return cos, 1 - cos
        p, q = before.double().log_softmax(-1), after.double().log_softmax(-1)  # (1, K), (B, K)
        kl = (p.exp() * (p - q)).sum(-1)  # (B,)
        return kl, kl


@torch.no_grad()
def head_importance(model: nn.Module, tokenizer: Any, text: str, *, kind: str | None = None, mode: str = "zero",
                    target: str | None = None, readout: str = "auto", pooling: Sequence[str] = ("mean",),
                    roles: HeadScores | None = None, batch: int = ROWS_PER_BATCH) -> Importance:
    """Silence every head of ``kind`` (default: the main attention) alone on ``text`` and measure
    the change (see the module docstring); heads sorted by change, largest first. ``roles``, when
    given for the same attention, fills each head's role and the *unnamed* flags."""
    from glassformer.explain.insight import text_inputs

    if mode not in ("zero", "mean"):
        raise InterventionError(f"unknown ablation mode {mode!r}; choose 'zero' or 'mean'")
    if batch < 1:
        raise InterventionError(f"batch must be at least 1, got {batch}")
    spec = model.main_attention if kind is None else model.attention_spec(kind)
    if roles is not None and roles.kind != spec.kind:
        raise InterventionError(f"the roles are of {roles.kind} attention, the heads of {spec.kind}")
    ids, tgt = text_inputs(model, tokenizer, text, target)
    measure = _Measure(model, tokenizer, ids, tgt, readout, pooling)
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)  # (1, T)
    y = None if tgt is None else torch.tensor([tgt], device=device)

    def run(n: int, hooks: dict[str, Any]) -> Tensor:
        kwargs = {} if y is None else {"tgt_ids": y.expand(n, -1)}
        return measure.read(model.run_with_hooks(x.expand(n, -1), hooks=hooks, **kwargs))

    before = run(1, {})
    refs: list[HeadRef] = spec.heads()
    afters, changes, where = [], [], []
    for start in range(0, len(refs), batch):
        chunk = refs[start:start + batch]
        by_site: dict[str, list[tuple[int, int]]] = {}
        for row, ref in enumerate(chunk):
            by_site.setdefault(spec.activation(ref.layer, "z"), []).append((row, ref.head))
        hooks = {name: partial(_silence_rows, rows=rows, mode=mode) for name, rows in by_site.items()}
        losses = run(len(chunk), hooks)
        after, change = measure.change(before, losses)
        afters += after.tolist()
        changes += change.tolist()
        if measure.kind == "loss":
            where += (losses - before).tolist()  # (rows, T-1) the change of each predicted token's loss
    heads = []
    for i, (ref, after, change) in enumerate(zip(refs, afters, changes)):
        role, score = roles.role(ref.layer, ref.head) if roles is not None else (None, None)
        heads.append(HeadEffect(ref.label, ref.layer, ref.head, float(after), float(change), role, score,
                                by_position=where[i] if where else None))
    top = max((h.change for h in heads), default=0.0)
    for h in heads:
        h.unnamed = roles is not None and top > 0 and h.change >= UNNAMED_SHARE * top and h.role is None
    heads.sort(key=lambda h: -h.change)
    start_value = float(before[0].mean()) if measure.kind == "loss" else (1.0 if measure.kind == "cosine" else 0.0)
    targets = measure.labels.tolist() if measure.kind == "loss" else []
    return Importance(spec.kind, mode, measure.kind, start_value, len(ids), heads, targets,
                      token_strings(tokenizer, targets) if targets else [])


def format_importance(imp: Importance, top: int | None = None) -> str:
    """The ranking as a table, ending with a newline; ``top`` rows (default: every head)."""
    rows = imp.heads if top is None else imp.heads[:top]
    lines = [f"each of the {len(imp.heads)} {imp.attention} heads silenced alone ({imp.mode}), {imp.n_tokens} tokens; "
             f"measure: {imp.describe()}" + (f", before {imp.before:.4f}" if imp.measure == "loss" else "")]
    after = "after" if imp.measure == "loss" else ""
    width = max([len("head")] + [len(h.label) for h in rows])
    where = imp.measure == "loss"
    lines.append(f"{'head':<{width}}  {after:>8}  {'change':>8}  {'most at':<12}  role on random tokens" if where else
                 f"{'head':<{width}}  {after:>8}  {'change':>8}  role on random tokens")
    for h in rows:
        if h.role_score is None:
            role = "(not scored)"
        else:
            role = f"{h.role} {h.role_score:.2f}" if h.role else f"-  (best {h.role_score:.3f})"
        flag = "  <- matters, no named role" if h.unnamed else ""
        shown_after = f"{h.after:8.4f}" if imp.measure == "loss" else " " * 8
        most = ""
        if where and h.by_position:  # the predicted token whose loss this head's absence raises most
            t = max(range(len(h.by_position)), key=lambda i: h.by_position[i])
            most = f"{imp.target_texts[t]!r}@{t + 1} {h.by_position[t]:+.1f}"[:12]
        lines.append(f"{h.label:<{width}}  {shown_after}  {h.change:+8.4f}  " + (f"{most:<12}  " if where else "")
                     + f"{role}{flag}")
    if top is not None and top < len(imp.heads):
        lines.append(f"... {len(imp.heads) - top} more (--top)")
    if imp.unnamed:
        lines.append(f"matter (>= {UNNAMED_SHARE:.0%} of the largest change) with no role above {ROLE_THRESHOLD}: "
                     + ", ".join(imp.unnamed))
    return "\n".join(lines) + "\n"
