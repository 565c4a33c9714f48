"""Head roles: what each attention head does, scored from its attention pattern.

The scores follow Olsson et al. 2022, "In-context Learning and Induction Heads" (§2 and
Appendix: "prefix matching" and "previous token" scores), measured on **repeated random
sequences**: n random tokens r_1..r_n, then the same n again. Random tokens carry no meaning, so
a head that still attends in a fixed pattern does so by its mechanism, not by the text.

With A the head's attention pattern (A[i, j]: how much query i attends to key j, rows sum to 1),
positions p+1 .. p+2n of the repeated sequence (p = tokens before it, e.g. [CLS]) and the second
copy at p+n+1 .. p+2n, each score is a mean attention weight, between 0 and 1:

    previous_token  = mean_{i in both copies, not the first}  A[i, i-1]
                      attends to the token just before it.
    induction       = mean_{i in the second copy but its last}  A[i, i-n+1]
                      "prefix matching": attends to the token that *followed* the earlier occurrence
                      of the current token, the step that lets an induction circuit copy it next
                      ([A][B] ... [A] -> [B]).
    duplicate_token = mean_{i in the second copy}  A[i, i-n]
                      attends to the earlier occurrence of the current token itself.
    current_token   = mean_{i in both copies, not the first}  A[i, i]
                      attends to its own position: reads the current token (not one of Olsson et
                      al.'s scores; added because ablation found heads the circuit needs that do
                      only this: in the induction demo, layer-0 heads whose removal raises the loss
                      on the repeat by 2.5 nats, and which no other score named).
    sink            = mean_{i in both copies}  (A[i, first] + A[i, last special])
                      attends to the first token ([CLS], <bos>, or the first random token) or to
                      the closing special token ([SEP]): a resting place when there is nothing to
                      do (Clark et al. 2019, "What Does BERT Look At?"; Xiao et al. 2023, "attention sinks").

A head's role is the score that is highest, shown when it reaches ``ROLE_THRESHOLD``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from glassformer.data.induction import induction_scores
from glassformer.explain.capture import model_inputs
from glassformer.explain.hooks import InterventionError

ROLES = ("previous_token", "induction", "duplicate_token", "current_token", "sink")
ROLE_THRESHOLD = 0.3  # below this, no score is strong enough to name the head
SHORT = {"previous_token": "prev", "induction": "induct", "duplicate_token": "dup", "current_token": "self", "sink": "sink"}


@dataclass
class HeadScores:
    """Every role score of every head of one attention: ``scores[role]`` is (L, H).

    Heads are named as everywhere (:class:`~glassformer.models.family.HeadRef`): ``label(layer, head)``
    -> ``"encoder.1.3"``, which ``glassformer ablate --head`` and ``ablate_heads`` accept."""

    stack: str  # "decoder" or "encoder"
    scores: dict[str, Tensor]
    n: int  # length of one random copy
    batch: int  # how many random sequences were averaged
    kind: str = "decoder-self"  # the attention scored: "decoder-self" or "encoder-self"
    prefix: str = "decoder"  # the first part of its head labels (AttentionSpec.label)

    def label(self, layer: int, head: int) -> str:
        """The head's label, ``f"{prefix}.{layer}.{head}"``."""
        return f"{self.prefix}.{layer}.{head}"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.scores[ROLES[0]].shape)  # type: ignore[return-value]

    def role(self, layer: int, head: int) -> tuple[str | None, float]:
        """The head's strongest role and its score; the role is None below :data:`ROLE_THRESHOLD`."""
        best = max(ROLES, key=lambda r: float(self.scores[r][layer, head]))
        score = float(self.scores[best][layer, head])
        return (best if score >= ROLE_THRESHOLD else None), score

    def best(self, role: str) -> tuple[int, int, float]:
        """(layer, head, score) of the head that scores highest on ``role``."""
        s = self.scores[role]
        flat = int(s.argmax())
        layer, head = divmod(flat, s.shape[1])
        return layer, head, float(s[layer, head])

    def to_json(self) -> dict[str, Any]:
        layers, heads = self.shape
        rows = []
        for layer in range(layers):
            for head in range(heads):
                role, score = self.role(layer, head)
                rows.append({"label": self.label(layer, head), "layer": layer, "head": head, **{r: round(float(self.scores[r][layer, head]), 6) for r in ROLES},
                             "role": role, "score": round(score, 6)})
        return {"stack": self.stack, "attention": self.kind, "n_layers": layers, "n_heads": heads, "sequence": {"random_tokens": self.n, "repeats": 2,
                "batch": self.batch}, "threshold": ROLE_THRESHOLD, "heads": rows}


def repeated_random_sequences(
    candidates: Sequence[int], n: int, batch: int, seed: int = 0, prefix: Sequence[int] = (), suffix: Sequence[int] = ()
) -> Tensor:
    """(batch, len(prefix) + 2n + len(suffix)) ids: prefix, n random tokens, the same n again, suffix.

    The n tokens of one sequence are distinct (so "the earlier occurrence" is unambiguous)."""
    if len(candidates) < n:
        raise InterventionError(f"need at least {n} distinct ordinary tokens for the random sequences, have {len(candidates)}")
    rng = random.Random(seed)
    rows = []
    for _ in range(batch):
        r = rng.sample(list(candidates), n)
        rows.append([*prefix, *r, *r, *suffix])
    return torch.tensor(rows, dtype=torch.long)


def ordinary_token_ids(tokenizer: Any | None, vocab_size: int) -> list[int]:
    """Ids to draw random tokens from: the vocabulary without special tokens and reserved
    entries like ``[unused12]`` or ``<pad>``."""
    if tokenizer is None:
        return list(range(vocab_size))
    specials = set(getattr(tokenizer, "special_ids", ()) or ())
    out = []
    for i in range(min(vocab_size, getattr(tokenizer, "vocab_size", vocab_size))):
        if i in specials:
            continue
        try:
            tok = str(tokenizer.id_to_token(i))
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if len(tok) > 2 and ((tok[0] == "[" and tok[-1] == "]") or (tok[0] == "<" and tok[-1] == ">")):
            continue
        out.append(i)
    return out


def special_frame(tokenizer: Any | None) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text ([CLS] ... [SEP] for BERT; none for GPT-2)."""
    if tokenizer is None:
        return [], []
    try:
        bare = list(tokenizer.encode("a", add_special_tokens=False))
        full = list(tokenizer.encode("a"))
    except TypeError:
        return [], []
    for start in range(len(full) - len(bare) + 1):
        if bare and full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


@torch.no_grad()
def head_scores(
    model: nn.Module,
    *,
    n: int = 32,
    batch: int = 8,
    seed: int = 0,
    candidates: Sequence[int] | None = None,
    prefix: Sequence[int] = (),
    suffix: Sequence[int] = (),
    kind: str | None = None,
) -> HeadScores:
    """Score every head of one self-attention on ``batch`` repeated random sequences of ``n`` tokens.

    ``kind`` defaults to the first self-attention the model runs (``model.attentions_spec()``):
    GPT's decoder, BERT's encoder, the encoder-decoder's encoder. The encoder-decoder reads the
    sequence as its source and as its target, so its ``decoder-self`` heads can be scored too."""
    specs = [s for s in model.attentions_spec() if s.site == "attn"]
    spec = specs[0] if kind is None else model.attention_spec(kind)
    if spec.site != "attn":
        raise InterventionError(f"head roles are scored on self-attention; {spec.kind} is not one")
    candidates = list(range(model.config.vocab_size)) if candidates is None else list(candidates)
    room = model.config.max_len - len(prefix) - len(suffix)
    n = max(2, min(n, room // 2, len(candidates)))
    ids = repeated_random_sequences(candidates, n, batch, seed, prefix, suffix)
    args, kwargs = model_inputs(model, ids, ids if model.needs_target else None)
    names = [spec.activation(i, "pattern") for i in range(spec.n_layers)]
    _, cache = model.run_with_cache(*args, names=names, **kwargs)
    patterns = cache.stack_heads(spec.kind, "pattern").float().cpu()  # (L, B, H, T, T)
    scores = role_scores(patterns.mean(1), n, len(prefix), bool(suffix))  # mean over the batch: (L, H, T, T)
    return HeadScores(spec.stack, scores, n, batch, spec.kind, spec.label)


def role_scores(patterns: Tensor, n: int, start: int, closing_special: bool) -> dict[str, Tensor]:
    """The role scores from attention patterns (..., T, T) of a sequence whose two random copies
    occupy positions ``start .. start + 2n - 1`` (the formulas are in the module docstring; the
    induction score is :func:`glassformer.data.induction.induction_scores`, the one definition)."""
    first = torch.arange(start + 1, start + 2 * n)  # every position of both copies but the very first
    second = torch.arange(start + n, start + 2 * n)  # the second copy
    prev = patterns[..., first, first - 1].mean(-1)
    t = patterns.shape[-1]
    one_row = patterns.reshape(-1, 1, 1, t, t)  # (X, B=1, H=1, T, T)
    induction = induction_scores(one_row, torch.tensor([n]), t, torch.tensor([start])).reshape(patterns.shape[:-2])
    duplicate = patterns[..., second, second - n].mean(-1)
    current = patterns[..., first, first].mean(-1)
    sink = patterns[..., first, 0]
    if closing_special:
        sink = sink + patterns[..., first, patterns.shape[-1] - 1]
    return {"previous_token": prev, "induction": induction, "duplicate_token": duplicate, "current_token": current,
            "sink": sink.mean(-1)}


def format_heads(scores: HeadScores) -> str:
    """A layers × heads table: each head's top role and score (``—`` below the threshold)."""
    layers, heads = scores.shape
    header = ["layer"] + [f"head {h}" for h in range(heads)]
    rows = [header]
    for layer in range(layers):
        cells = [str(layer)]
        for head in range(heads):
            role, score = scores.role(layer, head)
            cells.append(f"{SHORT[role]} {score:.2f}" if role else f"— {score:.2f}")
        rows.append(cells)
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    legend = (f"roles: prev = previous-token, induct = induction, dup = duplicate-token, self = current token, "
              f"sink = first/closing token; — = no score ≥ {ROLE_THRESHOLD}; {scores.kind} attention (heads {scores.prefix}.LAYER.HEAD), {scores.batch} sequences "
              f"of {scores.n} random tokens repeated twice")
    return "\n".join(lines) + "\n" + legend + "\n"


def sequence_for_model(model: nn.Module, tokenizer: Any | None) -> dict[str, Any]:
    """The ``candidates``, ``prefix`` and ``suffix`` arguments of :func:`head_scores` for a model
    and its tokenizer (specials framed as the tokenizer frames a text)."""
    prefix, suffix = special_frame(tokenizer)
    return {"candidates": ordinary_token_ids(tokenizer, model.config.vocab_size), "prefix": prefix, "suffix": suffix}
