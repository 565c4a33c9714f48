"""What the "why" tools compare, for every kind of model a user trains or fine-tunes.

An intervention (switching heads off, patching an activation) is judged by what the model reads
out of its final stream, read the same way before and after:

* ``classes``   a classifier (BERT with ``num_labels > 0``): the class logits, compared as class
                probabilities and KL(before ‖ after); the pooled [CLS] through the pooler's tanh and
                the classification head (``model.class_readout``);
* ``next``      a GPT or an encoder-decoder: the next-token distribution at the last position;
* ``masked``    a BERT with its masked-LM head: the distribution at the first mask token;
* ``embedding`` an encoder without a head (a sentence-transformers MiniLM, ``train embed``): the
                sentence vector, pooled over the tokens as ``glassformer embed`` pools it (the
                directory's sentence-transformers pooling, mean by default), compared by cosine
                similarity (normalising the vector does not change a cosine).

The default is ``model.readout_kind`` (:mod:`glassformer.models.family`): what the model's own
forward pass answers. A BERT with both a classifier and a masked-LM head can be read either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from glassformer.explain.hooks import InterventionError
from glassformer.explain.lens import model_token_logits
from glassformer.explain.tokens import token_strings

READOUT_CHOICES = ("auto", "classes", "tokens", "embedding")  # what a command line may ask for


@dataclass(frozen=True)
class Readout:
    """How to read one forward pass's output: ``readout.read(model, out)`` -> (B, K)."""

    kind: str  # "classes" | "next" | "masked" | "embedding"
    position: int | None = None  # next / masked: the position whose prediction is read
    labels: tuple[str, ...] = ()  # classes: the class names
    pooling: tuple[str, ...] = ("mean",)  # embedding: sentence-transformers pooling modes

    def read(self, model: nn.Module, out: Any) -> Tensor:
        """Class logits (B, num_labels), token logits at the position (B, V) or sentence vectors (B, C)."""
        if self.kind == "classes":
            return model.class_readout(out.last_hidden_state).float()  # (B, num_labels)
        if self.kind == "embedding":
            from glassformer.interop.sentence_transformers import pool

            h = out.last_hidden_state.float()  # (B, T, C)
            return pool(h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device), self.pooling)  # (B, C)
        return model_token_logits(model, out)[:, self.position].float()  # (B, V)

    @property
    def measures(self) -> str:
        """What the tools report for this readout, in words."""
        return {"classes": "class probabilities", "embedding": "cosine similarity of the sentence vectors"}.get(
            self.kind, "the predicted token distribution")


def sentence_pooling(directory: str | None) -> tuple[str, ...]:
    """The pooling modes a model directory's sentence-transformers ``modules.json`` declares (mean
    when it has none), so the vector compared is the one ``glassformer embed`` gives."""
    if directory is None:
        return ("mean",)
    from glassformer.interop.sentence_transformers import read_sentence_config

    config = read_sentence_config(directory)
    return config.pooling if config is not None else ("mean",)


def mask_position(model: nn.Module, tokenizer: Any, ids: list[int]) -> int:
    """The first mask token of the text (what a masked-LM readout compares); a clear error without one."""
    mask = getattr(tokenizer, "mask_id", None)
    if mask is None:
        mask = getattr(model.config, "mask_token_id", None)
    if mask is None or mask not in ids:
        shown = tokenizer.decode([mask]) if mask is not None else "the mask token"
        raise InterventionError(f"for a masked-LM {type(model).__name__}, put a mask token ({shown}) in the text: "
                                "ablate and patch compare its prediction")
    return ids.index(mask)


def choose_readout(model: nn.Module, tokenizer: Any, ids: list[int], readout: str = "auto",
                   pooling: Sequence[str] = ("mean",), tgt: list[int] | None = None) -> Readout:
    """The :class:`Readout` for ``readout`` (one of :data:`READOUT_CHOICES`; ``auto`` is
    ``model.readout_kind``), with the position a token readout reads (``ids``: the text as the
    model reads it; ``tgt``: an encoder-decoder's decoder input). A model that cannot be read that
    way is refused, naming what it can do."""
    if readout not in READOUT_CHOICES:
        raise InterventionError(f"unknown readout {readout!r}; choose {', '.join(READOUT_CHOICES)}")
    kinds = model.readouts
    if readout == "auto":
        if not kinds:
            raise InterventionError(f"this {type(model).__name__} has no head to read its output with")
        kind = kinds[0]
    elif readout == "tokens":
        kind = next((k for k in kinds if k in ("next", "masked")), None)
        if kind is None:
            from glassformer.explain.lens import require_readout

            require_readout(model, "a token readout")
    else:
        kind = readout
    if kind not in kinds:
        words = {"classes": "class probabilities", "next": "tokens", "masked": "tokens", "embedding": "embedding"}
        can = sorted({words[k] for k in kinds})
        raise InterventionError(f"this {type(model).__name__} cannot be read as {readout}"
                                + (f"; it reads out {', '.join(can)}" if can else ""))
    if kind == "classes":
        return Readout("classes", labels=tuple(model.class_labels))
    if kind == "embedding":
        return Readout("embedding", pooling=tuple(pooling))
    if kind == "next":
        return Readout("next", position=(len(tgt) if tgt is not None else len(ids)) - 1)
    return Readout("masked", position=mask_position(model, tokenizer, ids))


def kl(before: Tensor, after: Tensor) -> float:
    """KL(softmax(before) ‖ softmax(after)) of two logit vectors, in nats (float64)."""
    p, q = before.double().log_softmax(-1), after.double().log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two vectors (float64)."""
    return float(nn.functional.cosine_similarity(a.double(), b.double(), dim=-1))


def class_rows(readout: Readout, runs: dict[str, Tensor]) -> list[dict[str, Any]]:
    """One row per class: its probability under each run (``{"before": logits, "after": logits}``)."""
    probs = {name: logits.double().softmax(-1) for name, logits in runs.items()}
    return [{"label": label, "id": i, **{f"p_{name}": round(float(p[i]), 6) for name, p in probs.items()},
             **{f"logit_{name}": round(float(runs[name][i]), 6) for name in runs}}
            for i, label in enumerate(readout.labels)]


def top_tokens(tokenizer: Any, logits: Tensor, k: int) -> list[dict[str, Any]]:
    """The k most likely tokens of a logit vector: ``[{"token", "id", "p"}]``."""
    p, i = logits.double().softmax(-1).topk(min(k, logits.shape[-1]))
    ids = [int(j) for j in i]
    return [{"token": s, "id": j, "p": round(float(q), 6)} for s, j, q in zip(token_strings(tokenizer, ids), ids, p)]


def resolve_label(model: nn.Module, name: str) -> int:
    """A class index from its name (``--label positive``), ``LABEL_i`` or its index; an error lists the classes."""
    labels = model.class_labels
    if not labels:
        raise InterventionError(f"--label names a class; this {type(model).__name__} has no classification head "
                                "(use --token for a language model)")
    if name in labels:
        return labels.index(name)
    if name.isdigit() and int(name) < len(labels):
        return int(name)
    if name.startswith("LABEL_") and name[6:].isdigit() and int(name[6:]) < len(labels):
        return int(name[6:])
    raise InterventionError(f"class {name!r} is not one of this model's; its classes are {', '.join(labels)}")


__all__ = ["READOUT_CHOICES", "Readout", "choose_readout", "class_rows", "cosine", "kl", "mask_position",
           "resolve_label", "sentence_pooling", "top_tokens"]
